"""HTTP routes only: parse, call the gateway, shape the response. Built by `create_app(settings)`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from hardware.errors import TierRunnerError
from runners.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ErrorResponse, ModelList
from tiers.gateway import Dispatch, Gateway
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
        _record_route(request, dispatch)
        headers = _route_headers(dispatch)
        if not body.stream:
            completion = await gateway.complete(dispatch, body)
            request.state.prompt_tokens = completion.usage.prompt_tokens
            request.state.completion_tokens = completion.usage.completion_tokens
            return JSONResponse(completion.model_dump(mode="json"), headers=headers)
        chunks = gateway.stream(dispatch, body)
        first = await anext(chunks)  # request errors surface here, as a plain HTTP error
        return StreamingResponse(_sse(request, first, chunks), media_type="text/event-stream", headers=headers)

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


def _record_route(request: Request, dispatch: Dispatch) -> None:
    request.state.feature = dispatch.route.label
    request.state.tier = dispatch.route.tier
    request.state.model = dispatch.runner.model_name


def _route_headers(dispatch: Dispatch) -> dict[str, str]:
    return {
        "x-tier": str(dispatch.route.tier),
        "x-model": dispatch.runner.model_name,
        "x-feature": dispatch.route.label,
        "cache-control": "no-cache",
    }


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
