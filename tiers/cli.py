"""The one console script; each package contributes its subcommands through an entry-point group."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click

from hardware.errors import ConfigError

COMMAND_GROUP = "tier_runner.commands"


class PluginGroup(click.Group):
    """Finds subcommands by entry point, so this module never imports the packages above it."""

    def _commands(self) -> dict:
        return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._commands())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        ep = self._commands().get(name)
        return ep.load() if ep else None


@click.group(cls=PluginGroup)
def cli() -> None:
    """value-tier-runner: serve each AI feature from the tier its business value calls for."""


def main() -> None:
    try:
        cli(standalone_mode=False)
    except ConfigError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
