"""The app: built by `create_app(settings)`, its shared objects on `app.state`, one router per job.

Configuration errors surface here, before the server binds; runners and the ledger start in the
lifespan. The routers (tiers/api/) only speak HTTP; the serving layer (tiers/serving/) does the rest.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tiers.api import (
    admin, anthropic_messages, insights, openai_chat, openai_completions, openai_embeddings, openai_responses, status,
)
from tiers.api.errors import install_error_handlers
from tiers.api.middleware import BodyLimitMiddleware, RequestContextMiddleware
from tiers.auth import Access
from tiers.cache.embedders import llamacpp_model
from tiers.cache.health import CacheCollector
from tiers.cache.semantic import SemanticCache
from tiers.cache.store import Limits
from tiers.embedding_models import EmbeddingModels
from tiers.heap import settle_after_startup
from tiers.estimates_metrics import EstimatesCollector
from tiers.ledger.spool import Spool, worker_slots
from tiers.ledger.store import Ledger
from tiers.live_config import LiveConfig
from tiers.metrics import Metrics
from tiers.pool_metrics import ReplicaCollector
from tiers.recorder import Recorder
from tiers.serving.embeddings import EmbeddingService
from tiers.serving.service import Service
from tiers.settings import Settings
from tiers.shadow import ShadowScorer
from tiers.shared.wiring import SharedWiring
from tiers.tier_runners import TierRunners

ROUTERS = (openai_chat.router, anthropic_messages.router, openai_completions.router, openai_responses.router,
           openai_embeddings.router, admin.router, insights.router, status.router)


def create_app(settings: Settings) -> FastAPI:
    runners = TierRunners(settings.profile, out_of_process=settings.workers > 1)
    embedder_model = (llamacpp_model(settings.cache_embedder_model, runners.get(3))
                      if settings.cache_embedder == "llamacpp" else None)
    cache = SemanticCache(settings.cache_embedder, settings.cache_backend, settings.redis_url,
                          limits=Limits(settings.cache_max_entries, settings.cache_max_bytes),
                          embedder_model=embedder_model)
    config = LiveConfig(settings.routing, runners, settings.reload_interval_s, check=cache.check_table)
    spool = settings.data_dir / "spool"
    ledger = Ledger(settings.ledger_database_url(),
                    Spool.claim(worker_slots(spool, settings.workers)) if settings.workers > 1 else spool,
                    peers=settings.workers > 1 or settings.redis_url is not None)
    metrics = Metrics()
    metrics.live.register(CacheCollector(cache.health))
    metrics.live.register(ReplicaCollector(lambda: config.runners))
    shared = SharedWiring.build(settings.redis_url, config, metrics.live)  # None without --redis-url
    recorder = Recorder(ledger, metrics, shared and shared.state)
    shadow = ShadowScorer(lambda: config.runners, ledger, metrics.registry)
    metrics.live.register(EstimatesCollector(ledger, lambda: config.routing))
    access = Access.from_file(settings.keys, shared and shared.limiter)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ledger.start()
        sweeper = asyncio.create_task(cache.sweep_forever())  # expired entries go even if nobody asks again
        try:
            await config.runners.start()
            config.start_watching()
            if shared:
                shared.start()
            if any(f.cache and f.cache.enabled for f in config.routing.features.values()):
                await asyncio.to_thread(cache.warm)
            settle_after_startup()
            yield
        finally:
            sweeper.cancel()
            if shared:
                await shared.stop()
            await shadow.stop()
            await config.stop_watching()
            await config.runners.stop()
            ledger.close()

    app = FastAPI(title="value-tier-runner", version="0.1.0", lifespan=lifespan)
    state = app.state
    state.settings, state.config, state.ledger, state.metrics = settings, config, ledger, metrics
    state.cache, state.access, state.shared = cache, access, shared
    state.service = Service(config, recorder, access, cache, settings.max_messages, settings.default_max_tokens,
                            shadow)
    state.embeddings = EmbeddingService(config, recorder, access, EmbeddingModels(config.runners.profile,
                                                                                 config.runners.path))
    state.started_at = int(time.time())
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)
    for router in ROUTERS:
        app.include_router(router)
    return app
