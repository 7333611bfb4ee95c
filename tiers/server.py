"""HTTP routes only: parse, call the gateway, shape the response. Built by `create_app(settings)`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from hardware.errors import TierRunnerError
from runners.base import Runner
from runners.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ErrorResponse,
    ModelList,
    Usage,
    chunks_from_completion,
)
from tiers.gateway import Dispatch, Gateway
from tiers.policy import Outcome
from tiers.http_errors import error_for, install_error_handlers
from tiers.http_middleware import BodyLimitMiddleware, RequestContextMiddleware
from tiers.settings import Settings

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 503)}


def create_app(settings: Settings, gateway: Gateway | None = None) -> FastAPI:
    """The gateway is built here (config errors surface before the server binds) and started in lifespan."""
    gateway = gateway or Gateway(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(title="value-tier-runner", version="0.1.0", lifespan=lifespan)
    app.state.gateway = gateway
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware)

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        x_feature: Annotated[str | None, Header()] = None,
    ):
        dispatch = gateway.dispatch(body, x_feature)
        request.state.feature = dispatch.route.label
        if body.stream and not dispatch.gated:
            chunks = gateway.stream(dispatch, body)
            first = await anext(chunks)  # request errors surface here, as a plain HTTP error
            headers = _headers(dispatch, dispatch.runner, attempts=None)
            _record(request, dispatch.runner)
            return StreamingResponse(_sse(request, first, chunks), media_type="text/event-stream", headers=headers)
        outcome = await gateway.complete(dispatch, body)
        headers = _headers(dispatch, outcome.runner, attempts=outcome)
        _record(request, outcome.runner, outcome.completion.usage)
        if body.stream:  # gated: the whole answer was checked before the first byte
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            chunks = _aiter(chunks_from_completion(outcome.completion, include_usage))
            first = await anext(chunks)
            return StreamingResponse(_sse(request, first, chunks), media_type="text/event-stream", headers=headers)
        return JSONResponse(outcome.completion.model_dump(mode="json"), headers=headers)

    @app.post("/admin/reload")
    async def reload_routing() -> dict:
        table = gateway.reload_routing()
        return {"status": "reloaded", "routing": str(settings.routing), "features": sorted(table.features)}

    @app.get("/v1/models", response_model=ModelList)
    async def list_models() -> ModelList:
        return gateway.models()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        is_ready, body = gateway.readiness()
        return JSONResponse(body, status_code=200 if is_ready else 503)

    return app


def _record(request: Request, runner: Runner, usage: Usage | None = None) -> None:
    request.state.tier = runner.tier
    request.state.model = runner.model_name
    if usage is not None:
        request.state.prompt_tokens = usage.prompt_tokens
        request.state.completion_tokens = usage.completion_tokens


def _headers(dispatch: Dispatch, runner: Runner, attempts: Outcome | None) -> dict[str, str]:
    """How the answer was made: tier, model, feature, and for gated features the cascade."""
    headers = {
        "x-tier": str(runner.tier),
        "x-model": runner.model_name,
        "x-feature": dispatch.route.label,
        "x-downgraded": "true" if (attempts.downgraded if attempts else dispatch.downgraded) else "false",
        "cache-control": "no-cache",
    }
    headers["x-escalated"] = "true" if attempts and attempts.escalated else "false"
    if attempts is not None:
        headers["x-attempts"] = ",".join(a.summary for a in attempts.attempts)
        if attempts.verdict is not None:
            headers["x-gate"] = attempts.verdict.header
    return headers


async def _aiter(items):
    for item in items:
        yield item


async def _sse(request: Request, first: ChatCompletionChunk, chunks: AsyncIterator[ChatCompletionChunk]):
    """Server-sent events ending in [DONE]; a failure mid-stream becomes an error event."""
    try:
        chunk = first
        while True:
            if chunk.usage is not None:
                request.state.prompt_tokens = chunk.usage.prompt_tokens
                request.state.completion_tokens = chunk.usage.completion_tokens
            yield f"data: {chunk.model_dump_json()}\n\n"
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                break
        yield "data: [DONE]\n\n"
    except TierRunnerError as exc:
        request.state.error = exc.code or exc.error_type
        yield f"data: {error_for(exc).body.decode()}\n\n"
    finally:
        await chunks.aclose()
