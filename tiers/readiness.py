"""What /ready and /v1/models say: every tier's state, the ledger's and the cache's health, and the names a
client may call."""

from __future__ import annotations

from tiers.cache.semantic import SemanticCache
from tiers.ledger.store import Ledger
from tiers.live_config import LiveConfig


def readiness(config: LiveConfig, ledger: Ledger, cache: SemanticCache) -> tuple[bool, dict]:
    """A degraded cache (its Redis down) leaves the gateway ready: requests are served without it."""
    runners = config.runners
    tiers: dict[str, dict] = {}
    for tier in (1, 2, 3):
        runner = runners.get(tier)
        if runner is None:
            tiers[str(tier)] = {"state": "not_configured", "detail": f"profile {runners.name!r} has no tiers.{tier}"}
        else:
            tiers[str(tier)] = {**runner.status().model_dump(), "optional": runner.placement.optional}
    ready = runners.supervisor.ready()
    body = {"status": "ready" if ready else "not_ready", "profile": str(runners.path), "tiers": tiers,
            "ledger": ledger.health(), "cache": cache.health.report()}
    return ready, body


def model_names(config: LiveConfig) -> list[str]:
    return config.routing.routable_names()
