"""`tier-runner serve`: start the unified OpenAI-compatible endpoint."""

from __future__ import annotations

from pathlib import Path

import click

from tiers.settings import Settings


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, envvar="TIER_RUNNER_HOST")
@click.option("--port", default=8080, show_default=True, type=int, envvar="TIER_RUNNER_PORT")
@click.option("--profile", default="workstation", show_default=True, envvar="TIER_RUNNER_PROFILE",
              help="hardware profile: a name under hardware/profiles or a YAML path")
@click.option("--routing", type=click.Path(path_type=Path), default=None, envvar="TIER_RUNNER_ROUTING",
              help="routing table YAML (default: the shipped tiers/routing.yaml)")
@click.option("--max-body-bytes", type=int, default=1 << 20, show_default=True, envvar="TIER_RUNNER_MAX_BODY_BYTES")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".data"), show_default=True,
              envvar="TIER_RUNNER_DATA_DIR", help="ledger database and spool")
@click.option("--ledger-url", default=None, envvar="TIER_RUNNER_LEDGER_URL",
              help="SQLAlchemy URL of the ledger (default: SQLite in the data dir), e.g. postgresql+psycopg://...")
@click.option("--cache-backend", type=click.Choice(["memory", "redis"]), default=None, envvar="TIER_RUNNER_CACHE_BACKEND",
              help="default: redis with --redis-url, else memory")
@click.option("--redis-url", default=None, envvar="TIER_RUNNER_REDIS_URL",
              help="Redis shared by gateway replicas: keys' rate limits and spend caps, budgets, reload announcements, "
                   "the cache")
@click.option("--cache-embedder", type=click.Choice(["minilm", "llamacpp"]), default="minilm", show_default=True,
              envvar="TIER_RUNNER_CACHE_EMBEDDER")
@click.option("--cache-embedder-model", default=None, envvar="TIER_RUNNER_CACHE_EMBEDDER_MODEL",
              help="for --cache-embedder llamacpp: a GGUF of the model catalog (default: the one Tier 3 serves)")
@click.option("--cache-max-entries", type=click.IntRange(1), default=100_000, show_default=True,
              envvar="TIER_RUNNER_CACHE_MAX_ENTRIES", help="entries over the whole cache, every feature together")
@click.option("--cache-max-bytes", type=click.IntRange(1 << 20), default=256 << 20, show_default=True,
              envvar="TIER_RUNNER_CACHE_MAX_BYTES", help="bytes over the whole cache, every feature together")
@click.option("--keys", type=click.Path(path_type=Path), default=None, envvar="TIER_RUNNER_KEYS",
              help="client API keys (YAML of sha256 hashes); without it the server is keyless and loopback-only")
@click.option("--default-max-tokens", type=click.IntRange(1, 32_768), default=512, show_default=True,
              envvar="TIER_RUNNER_DEFAULT_MAX_TOKENS",
              help="max_tokens for requests that set none and whose feature's request block sets none")
@click.option("--reload-interval", type=click.FloatRange(0), default=1.0, show_default=True,
              envvar="TIER_RUNNER_RELOAD_INTERVAL", help="seconds between checks of the routing and profile files; "
                                                         "0: only POST /admin/reload (or its announcement) reloads")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning"]),
              envvar="TIER_RUNNER_LOG_LEVEL")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, envvar="TIER_RUNNER_WORKERS",
              help="gateway processes on one port; above 1 every tier must run out of process (hosted, vLLM by url) "
                   "and --redis-url is needed")
def serve(host: str, port: int, profile: str, routing: Path | None, max_body_bytes: int, data_dir: Path,
          ledger_url: str | None, cache_backend: str | None, redis_url: str | None, cache_embedder: str,
          cache_embedder_model: str | None, cache_max_entries: int, cache_max_bytes: int, keys: Path | None,
          default_max_tokens: int, reload_interval: float, log_level: str, workers: int) -> None:
    """Serve every tier of the profile behind one OpenAI-compatible endpoint."""
    import uvicorn

    from tiers.workers import configure_logging, load_leftovers, serve_workers

    fields = {"host": host, "port": port, "profile": profile, "max_body_bytes": max_body_bytes, "log_level": log_level,
              "data_dir": data_dir, "ledger_url": ledger_url, "cache_backend": cache_backend, "redis_url": redis_url,
              "cache_embedder": cache_embedder, "cache_embedder_model": cache_embedder_model,
              "cache_max_entries": cache_max_entries, "cache_max_bytes": cache_max_bytes, "keys": keys,
              "default_max_tokens": default_max_tokens, "reload_interval_s": reload_interval, "workers": workers}
    if routing is not None:
        fields["routing"] = routing
    settings = Settings(**fields)
    configure_logging(log_level)
    mode = "keyless: no client keys, only this machine can call it" if keys is None else f"client keys from {keys}"
    serving = f"tier-runner: serving on http://{host}:{port}/v1 with profile {profile} ({mode})"
    if workers > 1:
        serve_workers(settings, f"{serving}, {workers} workers")  # configuration errors stop us before binding
        return
    from tiers.server import create_app

    load_leftovers(settings, sorted((settings.data_dir / "spool").glob("worker-*")))  # a --workers run's rows
    app = create_app(settings)  # configuration errors stop us here, before binding
    app.state.access.check_bind(host)
    click.echo(serving, err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
