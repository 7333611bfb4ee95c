"""What /ready and /v1/models say: every tier's state (a pool's, replica by replica), the ledger's and the
cache's health, and the names a client may call."""

from __future__ import annotations

from runners.pool import PoolRunner
from tiers.cache.semantic import SemanticCache
from tiers.ledger.store import Ledger
from tiers.live_config import LiveConfig


def readiness(config: LiveConfig, ledger: Ledger, cache: SemanticCache, shared=None) -> tuple[bool, dict]:
    """A degraded cache or shared state (their Redis down) leaves the gateway ready: requests are served without
    the cache, and each key's limits by its `on_redis_outage`."""
    runners = config.runners
    tiers: dict[str, dict] = {}
    for tier in (1, 2, 3):
        runner = runners.get(tier)
        if runner is None:
            tiers[str(tier)] = {"state": "not_configured", "detail": f"profile {runners.name!r} has no tiers.{tier}"}
        else:
            tiers[str(tier)] = {**runner.status().model_dump(), "optional": runner.placement.optional}
            if isinstance(runner, PoolRunner):  # every replica: ready, ejected (its circuit open), failed, ...
                tiers[str(tier)].update(min_ready=runner.min_ready, replicas=runner.replicas())
    ready = runners.supervisor.ready()
    body = {"status": "ready" if ready else "not_ready", "profile": str(runners.path), "tiers": tiers,
            "ledger": ledger.health(), "cache": cache.health.report(),
            "shared_state": shared.state.report() if shared else {"backend": "none", "state": "off"}}
    return ready, body


def model_names(config: LiveConfig) -> list[str]:
    return config.routing.routable_names()
