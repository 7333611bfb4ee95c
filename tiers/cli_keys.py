"""`tier-runner keys new`: make a client or admin key; only its hash goes into the keys file."""

from __future__ import annotations

import secrets

import click

from tiers.auth import hash_key


@click.group()
def keys() -> None:
    """Client API keys for the gateway (stored as sha256 hashes)."""


@keys.command("new")
@click.option("--id", "key_id", required=True, help="name recorded in the ledger, e.g. support-bot")
@click.option("--feature", "features", multiple=True, help="feature it may call (repeat); default: all")
@click.option("--admin", is_flag=True, help="make the admin key instead of a client key")
def new(key_id: str, features: tuple[str, ...], admin: bool) -> None:
    """Print a new key once (give it to its owner) and the YAML to paste into the keys file."""
    secret = f"trk-{secrets.token_urlsafe(32)}"
    click.echo(f"key (shown once, store it now): {secret}", err=True)
    if admin:
        click.echo(f"admin_sha256: {hash_key(secret)}")
        return
    click.echo("keys:")
    click.echo(f"  - id: {key_id}")
    click.echo(f"    sha256: {hash_key(secret)}")
    click.echo(f"    features: [{', '.join(features) if features else '*'}]")
    click.echo("    direct_tiers: false")
    click.echo("    rate_limit: {requests_per_minute: 600, tokens_per_minute: 200000}")
