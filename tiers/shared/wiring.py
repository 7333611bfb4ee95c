"""What `--redis-url` puts in a gateway: the shared state, the limiter that uses it, the reload announcer, the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from tiers.live_config import LiveConfig
from tiers.shared.announce import ReloadAnnouncer
from tiers.shared.limits import SharedLimiter
from tiers.shared.state import SharedCollector, SharedState


@dataclass
class SharedWiring:
    state: SharedState
    limiter: SharedLimiter
    announcer: ReloadAnnouncer

    @classmethod
    def build(cls, redis_url: str | None, config: LiveConfig, registry: CollectorRegistry) -> SharedWiring | None:
        if not redis_url:
            return None
        state = SharedState(redis_url)
        registry.register(SharedCollector(state))
        return cls(state, SharedLimiter(state), ReloadAnnouncer(state, config))

    def start(self) -> None:
        self.state.start()
        self.announcer.start()

    async def stop(self) -> None:
        await self.announcer.stop()
        await self.state.close()
