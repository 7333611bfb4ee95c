"""POST /v1/completions: OpenAI's legacy text completion in, the serving layer once per prompt, its JSON (or SSE
chunks) out. A prompt is plain text: no chat template is applied."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from runners.wire import openai_completions
from runners.wire.openai_chat_protocol import ErrorResponse
from runners.wire.openai_completions_protocol import Completion, CompletionRequest
from tiers.api.deps import Client
from tiers.api.direct_route import DirectRoute
from tiers.api.sse import log_fields, sse_response
from tiers.serving.records import Call

router = APIRouter(route_class=DirectRoute)
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)}


@router.post("/v1/completions", response_model=Completion, responses=ERRORS)
async def completions(body: CompletionRequest, request: Request, key: Client,
                      x_feature: Annotated[str | None, Header()] = None) -> Response:
    internals = openai_completions.to_requests(body)
    call = Call(request.state.request_id, "completions", body.model, x_feature, key)
    service = request.app.state.service
    # One after another: each prompt's budget reservation is settled (by its rows) before the next is admitted.
    replies = [await service.handle(call, internal) for internal in internals]
    first = replies[0]
    if first.deltas is not None:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        writer = openai_completions.ChunkWriter(first.model, include_usage)
        return sse_response(request, first,
                            encode=lambda delta: [f"data: {c.model_dump_json()}\n\n" for c in writer.chunks(delta)],
                            end=lambda: ["data: [DONE]\n\n"],
                            error_event=lambda error: f"data: {error.decode()}\n\n")
    log_fields(request, first)
    headers = dict(first.headers)
    headers["x-cost-usd"] = f"{sum(float(r.headers.get('x-cost-usd', 0)) for r in replies):.8f}"
    completion = openai_completions.to_completion([r.answer for r in replies], body.n)
    return Response(completion.model_dump_json(), media_type="application/json", headers=headers)
