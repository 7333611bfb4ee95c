"""GET /v1/models, /v1/models/{id}, /health, /ready and /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from runners.wire.openai_chat_protocol import Model, ModelList
from tiers.api.deps import Client
from tiers.errors import NotFound
from tiers.readiness import model_names, readiness

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request, key: Client) -> ModelList:
    state = request.app.state
    return ModelList(data=[Model(id=name, created=state.started_at, owned_by="tier-runner")
                           for name in model_names(state.config)])


@router.get("/v1/models/{model_id:path}", response_model=Model)
async def get_model(model_id: str, request: Request, key: Client) -> Model:
    state = request.app.state
    if model_id not in model_names(state.config):
        raise NotFound(f"model {model_id!r} does not exist; GET /v1/models lists the feature:<name> and tier:<n> "
                       "names this gateway serves", param="model")
    return Model(id=model_id, created=state.started_at, owned_by="tier-runner")


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    state = request.app.state
    is_ready, body = readiness(state.config, state.ledger, state.cache, state.shared)
    return JSONResponse(body, status_code=200 if is_ready else 503)


@router.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
