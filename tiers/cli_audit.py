"""`tier-runner audit`: the feature audit from the ledger, as a table, JSON or an HTML report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from hardware.extras import require_extra
from tiers.routing import DEFAULT_ROUTING, load_routing
from tiers.settings import Settings


@click.command()
@click.option("--routing", type=click.Path(path_type=Path), default=DEFAULT_ROUTING, show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".data"), show_default=True,
              envvar="TIER_RUNNER_DATA_DIR")
@click.option("--ledger-url", default=None, envvar="TIER_RUNNER_LEDGER_URL")
@click.option("--window-hours", type=float, default=24 * 7, show_default=True, help="how far back to look")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "html"]), default="table", show_default=True)
@click.option("--output", type=click.Path(path_type=Path), default=None, help="write here instead of stdout")
def audit(routing: Path, data_dir: Path, ledger_url: str | None, window_hours: float, fmt: str,
          output: Path | None) -> None:
    """Flag features whose tier does not match their value: INVERTED, OVERSPEND, OVER_BUDGET, NO_DATA."""
    from tiers.audit import format_table, run_audit
    from tiers.audit_report import render_html
    from tiers.ledger.store import make_engine

    if fmt == "html":
        require_extra("matplotlib", "reports", "--format html")
    settings = Settings(routing=routing, data_dir=data_dir, ledger_url=ledger_url)
    engine = make_engine(settings.ledger_database_url())
    result = run_audit(engine, load_routing(routing), since=time.time() - window_hours * 3600)
    text = {"table": format_table, "json": lambda a: json.dumps(a.as_dict(), indent=2),
            "html": render_html}[fmt](result)
    if output:
        output.write_text(text, encoding="utf-8")
        click.echo(f"audit written to {output}", err=True)
    else:
        click.echo(text)
