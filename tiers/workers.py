"""`tier-runner serve --workers N`: N gateway processes on one port, for a gateway whose tiers run out of process.

- uvicorn's process manager runs the workers on one listening socket (the kernel spreads connections over
  them) and starts a new worker when one dies.
- Each worker is a whole gateway (tiers/server.py) with runners of its own, so every tier must run out of
  process: hosted, vLLM attached by `url`, or a pool of those. A tier that takes a place on this machine
  (llama.cpp, a vLLM server started here) would be loaded once per worker, and is refused by name, at start
  and on reload (TierRunners(out_of_process=True)); it serves from a gateway process of its own that this
  profile attaches to by `url` (docs/scaling.md).
- What must hold across workers is in Redis (`--redis-url`, required): client keys' rate limits and spend
  caps, feature budgets, reload announcements and the semantic cache.
- The ledger: a worker claims a spool slot (`<data_dir>/spool/worker-<i>`, locked while it lives); the worker
  that replaces a killed one claims the freed slot and loads the rows the dead one spooled. Before any worker
  starts, this process migrates the database once and loads what earlier runs left in any spool (a
  one-process server does the same with the workers' slots, so going back to one worker strands nothing).
- A worker that cannot start (its app or its lifespan failed) stops them all, and the command exits 3.
- /metrics: the counts of every worker, a killed one's too (prometheus_client's multiprocess mode, files in
  `<data_dir>/metrics`, emptied at start); live state (ledger, cache, replicas) is the answering worker's.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys

from hardware.errors import ConfigError
from tiers.auth import Access
from tiers.embedding_models import EmbeddingModels
from tiers.ledger.spool import Spool
from tiers.ledger.store import Ledger
from tiers.routing import load_routing
from tiers.settings import Settings
from tiers.tier_runners import TierRunners

SETTINGS_ENV = "TIER_RUNNER_WORKER_SETTINGS"
STARTUP_FAILURE = 3  # uvicorn's: a worker that exits with it stops the parent rather than being replaced
log = logging.getLogger("tier_runner.workers")


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # httpx logs every upstream call at INFO; our own request line already says what happened.
    logging.getLogger("httpx").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def check(settings: Settings) -> None:
    """Refuse, before anything binds, what N workers cannot serve correctly; ConfigError saying what to change."""
    n = settings.workers
    if not settings.redis_url:
        raise ConfigError(f"--workers {n}: the workers must share client keys' rate limits and spend caps, feature "
                          "budgets and the semantic cache; give --redis-url redis://HOST:6379/0, or use --workers 1")
    if settings.cache_backend != "redis":
        raise ConfigError(f"--workers {n}: --cache-backend memory gives each worker a cache of its own that an "
                          "invalidation reaches only once; leave --cache-backend unset (redis with --redis-url)")
    if settings.cache_embedder == "llamacpp":
        raise ConfigError(f"--workers {n}: --cache-embedder llamacpp loads a GGUF in every worker; use minilm, "
                          "or --workers 1")
    runners = TierRunners(settings.profile, out_of_process=True)  # refuses a tier that would run in each worker
    gguf = [tier for tier, placement in runners.profile.embeddings.items() if placement.runner == "llamacpp"]
    if gguf:
        raise ConfigError(f"{runners.path}: embeddings.{gguf[0]} (llamacpp) would load its GGUF in every worker of "
                          f"--workers {n}; serve it with runner: vllm or hosted by url, or use --workers 1")
    EmbeddingModels(runners.profile, runners.path)  # validates the embeddings section, as each worker will
    load_routing(settings.routing)
    Access.from_file(settings.keys).check_bind(settings.host)


def load_leftovers(settings: Settings, folders: list) -> None:
    """Migrate the ledger and load into it what these spool folders hold (rows earlier runs left spooled)."""
    for folder in folders:
        ledger = Ledger(settings.ledger_database_url(), folder)
        ledger.start()
        ledger.close()


def prepare(settings: Settings) -> Spool:
    """Load every spool once, empty the metrics folder. Returns the data dir's own spool, which the caller holds
    while the workers run: no other gateway starts on this data dir meanwhile."""
    root = settings.data_dir / "spool"
    load_leftovers(settings, [root, *sorted(root.glob("worker-*"))])
    metrics = settings.data_dir / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics.resolve())  # read by each worker's prometheus_client
    return Spool(root)


def serve_workers(settings: Settings, banner: str) -> None:
    """Check, prepare, say `banner` on stderr, then run the workers until a signal stops them all."""
    import click
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    check(settings)
    held = prepare(settings)
    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    config = uvicorn.Config("tiers.workers:worker_app", factory=True, workers=settings.workers, host=settings.host,
                            port=settings.port, log_level=settings.log_level, access_log=False)
    click.echo(banner, err=True)
    try:
        supervisor = Multiprocess(config, sockets=[config.bind_socket()])
        supervisor.run()
    finally:
        held.close()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        click.echo("tier-runner: a worker could not start (its log above says why), so every worker was stopped",
                   err=True)
        sys.exit(STARTUP_FAILURE)


def worker_app():
    """uvicorn's app factory, called in each worker process (spawned: a fresh interpreter, logging unset). An app
    that cannot be built exits with uvicorn's startup failure, which stops every worker rather than respawning."""
    from tiers.server import create_app

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.log_level)
    try:
        return create_app(settings)
    except ConfigError as exc:
        log.error("worker %s cannot start: %s", os.getpid(), exc.message)
    except Exception:
        log.exception("worker %s cannot start", os.getpid())
    sys.exit(STARTUP_FAILURE)
