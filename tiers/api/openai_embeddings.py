"""POST /v1/embeddings: OpenAI's embeddings JSON in, the embedding serving path, the vector list out."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from runners.wire import openai_embeddings as wire
from runners.wire.openai_chat_protocol import ErrorResponse
from tiers.api.deps import Client
from tiers.api.direct_route import DirectRoute
from tiers.serving.records import Call, Summary

router = APIRouter(route_class=DirectRoute)
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 413, 429, 503)}


@router.post("/v1/embeddings", response_model=wire.EmbeddingList, responses=ERRORS)
async def embeddings(body: wire.EmbeddingsRequest, request: Request, key: Client,
                     x_feature: Annotated[str | None, Header()] = None) -> Response:
    call = Call(request.state.request_id, "embeddings", body.model, x_feature, key)
    summary = Summary()
    try:
        done = await request.app.state.embeddings.embed(call, wire.inputs(body), body.dimensions, summary)
    finally:
        for name, value in summary.fields.items():
            setattr(request.state, name, value)
    answer = wire.to_list(done.vectors, done.model.model_name, done.tokens, body.encoding_format)
    return Response(answer.model_dump_json(), media_type="application/json", headers=done.headers)
