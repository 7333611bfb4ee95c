"""HTTP routes only: parse, call the serving layer, shape the response. Built by `create_app(settings)`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from hardware.errors import TierRunnerError
from runners.errors import InvalidRequest
from tiers.errors import NotFound
from runners.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ErrorResponse, ModelList
from tiers.audit import run_audit
from tiers.auth import Access, ClientKey
from tiers.cache.semantic import SemanticCache
from tiers.chat import ChatReply, ChatService
from tiers.gateway import Gateway
from tiers.http_errors import error_for, install_error_handlers
from tiers.http_middleware import BodyLimitMiddleware, RequestContextMiddleware
from tiers.ledger.store import Ledger
from tiers.metrics import Metrics
from tiers.recorder import Recorder
from tiers.settings import Settings

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)}


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64, description="the x-request-id of the answer")
    outcome: Literal["accepted", "corrected", "escalated_to_human", "negative"]
    note: str | None = Field(default=None, max_length=2000)


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    """Configuration errors surface here, before the server binds; runners and the ledger start in lifespan."""
    gateway = gateway or Gateway(settings)
    ledger = Ledger(settings.ledger_database_url(), settings.data_dir / "spool")
    metrics = Metrics()
    cache = SemanticCache(settings.cache_embedder, settings.cache_backend, settings.redis_url)
    recorder = Recorder(ledger, metrics)
    access = Access.from_file(settings.keys, recorder.spend)
    chat = ChatService(gateway, recorder, access, cache, settings.max_messages)

    # Dependencies are given as defaults (not Annotated): they are closures over this app's `access`.
    # They are `async def` because FastAPI runs a plain `def` dependency in a worker thread, a hop that
    # cost more than the whole check (benchmarks/gateway_overhead.py).
    async def client(secret: str | None = Depends(bearer)) -> ClientKey | None:
        return access.authenticate(secret)

    async def admin(secret: str | None = Depends(bearer)) -> None:
        access.require_admin(secret)

    Admin = [Depends(admin)]

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ledger.start()
        try:
            await gateway.start()
            if any(f.cache and f.cache.enabled for f in gateway.routing.features.values()):
                await asyncio.to_thread(cache.warm)
            yield
        finally:
            await gateway.stop()
            ledger.close()

    app = FastAPI(title="value-tier-runner", version="0.1.0", lifespan=lifespan)
    app.state.gateway = gateway
    app.state.ledger = ledger
    app.state.settings = settings
    app.state.access = access
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        key: ClientKey | None = Depends(client),
        x_feature: Annotated[str | None, Header()] = None,
    ):
        reply = await chat.handle(request.state.request_id, body, x_feature, key)
        if reply.chunks is not None:
            return StreamingResponse(_sse(request, reply), media_type="text/event-stream", headers=reply.headers)
        _log_fields(request, reply)
        return Response(reply.completion.model_dump_json(), media_type="application/json", headers=reply.headers)

    @app.post("/v1/feedback", responses=ERRORS)
    async def feedback(body: FeedbackRequest, key: ClientKey | None = Depends(client)) -> dict:
        await asyncio.to_thread(ledger.add_feedback, body.request_id, body.outcome, body.note)
        evicted = body.outcome in ("corrected", "negative") and cache.invalidate_request(body.request_id)
        return {"status": "recorded", "request_id": body.request_id, "outcome": body.outcome,
                "cache_entry_removed": bool(evicted)}

    @app.delete("/admin/cache", dependencies=Admin)
    async def clear_feature_cache(feature: str) -> dict:
        if feature not in gateway.routing.features:
            raise NotFound(f"feature {feature!r} is not in the routing table", param="feature")
        return {"feature": feature, "dropped": await asyncio.to_thread(cache.invalidate_feature, feature)}

    @app.delete("/admin/cache/{request_id}", dependencies=Admin)
    async def clear_cached_answer(request_id: str) -> dict:
        if not await asyncio.to_thread(cache.invalidate_request, request_id):
            raise NotFound(f"no cached answer came from or was served to {request_id!r}", param="request_id")
        return {"request_id": request_id, "deleted": True}

    @app.get("/v1/audit", dependencies=Admin)
    async def feature_audit(window_hours: float = 24 * 7) -> dict:
        if not 0 < window_hours <= 24 * 366:
            raise InvalidRequest("window_hours must be in (0, 8784]", param="window_hours")
        await asyncio.to_thread(ledger.flush, 5)
        since = time.time() - window_hours * 3600
        result = await asyncio.to_thread(run_audit, ledger.engine, gateway.routing, since)
        return result.as_dict()

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/admin/reload", dependencies=Admin)
    async def reload_configuration() -> dict:
        table = gateway.reload_routing()
        swapped = await gateway.reload_profile()
        return {"status": "reloaded", "routing": str(settings.routing), "features": sorted(table.features),
                "profile": str(gateway.profile_path), "tiers_swapped": swapped}

    @app.get("/v1/models", response_model=ModelList)
    async def list_models(key: ClientKey | None = Depends(client)) -> ModelList:
        return gateway.models()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        is_ready, body = gateway.readiness()
        body["ledger"] = {"state": "degraded" if ledger.last_error else "ok", "detail": ledger.last_error or ""}
        return JSONResponse(body, status_code=200 if is_ready else 503)

    return app


async def bearer(authorization: Annotated[str | None, Header()] = None,
           x_api_key: Annotated[str | None, Header()] = None) -> str | None:
    """The caller's secret from `Authorization: Bearer` (OpenAI SDKs) or `x-api-key`."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_api_key


def _log_fields(request: Request, reply: ChatReply) -> None:
    for key, value in reply.summary.items():
        setattr(request.state, key, value)


async def _sse(request: Request, reply: ChatReply) -> AsyncIterator[str]:
    """Server-sent events ending in [DONE]; a failure mid-stream becomes an error event."""
    chunks: AsyncIterator[ChatCompletionChunk] = reply.chunks
    try:
        async for chunk in chunks:
            yield f"data: {chunk.model_dump_json()}\n\n"
        yield "data: [DONE]\n\n"
    except TierRunnerError as exc:
        yield f"data: {error_for(exc).body.decode()}\n\n"
    finally:
        await chunks.aclose()
        _log_fields(request, reply)
