"""POST /v1/messages and /v1/messages/count_tokens: Anthropic Messages JSON in, the serving layer, a Message (or
Anthropic's stream events) out. Errors on these paths are Anthropic-shaped (`register_shape`)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from runners.wire import anthropic_ingress
from runners.wire.anthropic_protocol import AnthropicError, CountTokensRequest, Message, MessagesRequest, TokenCount
from tiers.api.deps import Client
from tiers.api.direct_route import DirectRoute
from tiers.api.errors import register_shape
from tiers.api.sse import log_fields, sse_response
from tiers.serving.counting import count_tokens
from tiers.serving.records import Call

router = APIRouter(route_class=DirectRoute)
ERRORS = {status: {"model": AnthropicError} for status in (400, 401, 403, 404, 413, 429, 503)}
register_shape("/v1/messages", lambda error: anthropic_ingress.error_body(error.status, error.message))


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.post("/v1/messages", response_model=Message, responses=ERRORS)
async def messages(body: MessagesRequest, request: Request, key: Client,
                   x_feature: Annotated[str | None, Header()] = None) -> Response:
    internal = anthropic_ingress.to_request(body)
    call = Call(request.state.request_id, "messages", body.model, x_feature, key)
    reply = await request.app.state.service.handle(call, internal)
    if reply.deltas is not None:
        writer = anthropic_ingress.EventWriter(reply.model)
        return sse_response(request, reply,
                            encode=lambda delta: [_event(*e) for e in writer.events(delta)],
                            end=lambda: [_event(*e) for e in writer.finish()],
                            error_event=lambda error: f"event: error\ndata: {error.decode()}\n\n")
    log_fields(request, reply)
    message = anthropic_ingress.to_message(reply.answer)
    return Response(message.model_dump_json(), media_type="application/json", headers=reply.headers)


@router.post("/v1/messages/count_tokens", response_model=TokenCount, responses=ERRORS)
async def messages_count_tokens(body: CountTokensRequest, request: Request, key: Client,
                                x_feature: Annotated[str | None, Header()] = None) -> Response:
    call = Call(request.state.request_id, "messages", body.model, x_feature, key)
    counted = await count_tokens(request.app.state.service, call, anthropic_ingress.count_request(body))
    headers = {"x-tier": str(counted.tier), "x-model": counted.model,
               "x-token-count": "exact" if counted.exact else "estimate"}
    return Response(TokenCount(input_tokens=counted.tokens).model_dump_json(), media_type="application/json",
                    headers=headers)
