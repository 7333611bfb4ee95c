"""POST /v1/responses: OpenAI's Responses API, stateless: its JSON in, the serving layer, a Response (or the
Responses event stream) out. Errors are OpenAI-shaped; a failure mid-stream is an `error` event."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from runners.wire import openai_responses
from runners.wire.openai_chat_protocol import ErrorResponse
from runners.wire.openai_responses_protocol import Response as ResponseObject, ResponsesRequest
from runners.wire.openai_responses_stream import EventWriter
from tiers.api.deps import Client
from tiers.api.direct_route import DirectRoute
from tiers.api.sse import log_fields, sse_response
from tiers.serving.records import Call

router = APIRouter(route_class=DirectRoute)
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)}


def _event(name: str, data: dict) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


@router.post("/v1/responses", response_model=ResponseObject, responses=ERRORS)
async def responses(body: ResponsesRequest, request: Request, key: Client,
                    x_feature: Annotated[str | None, Header()] = None) -> Response:
    internal = openai_responses.to_request(body)
    call = Call(request.state.request_id, "responses", body.model, x_feature, key)
    reply = await request.app.state.service.handle(call, internal)
    if reply.deltas is not None:
        writer = EventWriter(body, reply.model)
        return sse_response(request, reply, encode=lambda delta: [_event(*e) for e in writer.events(delta)],
                            end=lambda: [_event(*e) for e in writer.finish()],
                            error_event=lambda error: _event(*writer.error(json.loads(error)["error"])))
    log_fields(request, reply)
    answer = openai_responses.to_response(body, reply.answer)
    return Response(answer.model_dump_json(by_alias=True), media_type="application/json", headers=reply.headers)
