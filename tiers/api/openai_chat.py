"""POST /v1/chat/completions: OpenAI chat JSON in, the serving layer, OpenAI chat JSON (or SSE chunks) out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from runners.wire import openai_chat
from runners.wire.openai_chat_protocol import ChatCompletion, ChatCompletionRequest, ErrorResponse
from tiers.api.deps import Client
from tiers.api.direct_route import DirectRoute
from tiers.api.sse import log_fields, sse_response
from tiers.serving.records import Call

router = APIRouter(route_class=DirectRoute)
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)}


@router.post("/v1/chat/completions", response_model=ChatCompletion, responses=ERRORS)
async def chat_completions(body: ChatCompletionRequest, request: Request, key: Client,
                           x_feature: Annotated[str | None, Header()] = None) -> Response:
    internal = openai_chat.to_request(body)
    call = Call(request.state.request_id, "chat", body.model, x_feature, key)
    reply = await request.app.state.service.handle(call, internal)
    if reply.deltas is not None:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = openai_chat.ChunkWriter(reply.model, include_usage)
        return sse_response(request, reply,
                            encode=lambda delta: [f"data: {c}\n\n" for c in writer.json_chunks(delta)],
                            end=lambda: ["data: [DONE]\n\n"],
                            error_event=lambda error: f"data: {error.decode()}\n\n")
    log_fields(request, reply)
    completion = openai_chat.to_completion(reply.answer)
    return Response(completion.model_dump_json(), media_type="application/json", headers=reply.headers)
