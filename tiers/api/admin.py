"""Feedback on answers, and the admin endpoints: cache invalidation, reload, audit."""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from runners.errors import InvalidRequest
from tiers.api.deps import Admin, Client
from tiers.audit import run_audit
from tiers.errors import CacheUnavailable, NotFound

router = APIRouter()


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=1, max_length=64, description="the x-request-id of the answer")
    outcome: Literal["accepted", "corrected", "escalated_to_human", "negative"]
    note: str | None = Field(default=None, max_length=2000)


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request, key: Client) -> dict:
    state = request.app.state
    await asyncio.to_thread(state.ledger.add_feedback, body.request_id, body.outcome, body.note)
    evicted = False
    if body.outcome in ("corrected", "negative"):
        try:
            evicted = await asyncio.to_thread(state.cache.invalidate_request, body.request_id)
        except CacheUnavailable:  # the feedback is recorded; the cache shows as degraded on /ready
            pass
    return {"status": "recorded", "request_id": body.request_id, "outcome": body.outcome,
            "cache_entry_removed": bool(evicted)}


@router.delete("/admin/cache", dependencies=Admin)
async def clear_feature_cache(feature: str, request: Request) -> dict:
    state = request.app.state
    if feature not in state.config.routing.features:
        raise NotFound(f"feature {feature!r} is not in the routing table", param="feature")
    return {"feature": feature, "dropped": await asyncio.to_thread(state.cache.invalidate_feature, feature)}


@router.delete("/admin/cache/{request_id}", dependencies=Admin)
async def clear_cached_answer(request_id: str, request: Request) -> dict:
    if not await asyncio.to_thread(request.app.state.cache.invalidate_request, request_id):
        raise NotFound(f"no cached answer came from or was served to {request_id!r}", param="request_id")
    return {"request_id": request_id, "deleted": True}


@router.get("/v1/audit", dependencies=Admin)
async def feature_audit(request: Request, window_hours: float = 24 * 7) -> dict:
    if not 0 < window_hours <= 24 * 366:
        raise InvalidRequest("window_hours must be in (0, 8784]", param="window_hours")
    state = request.app.state
    await asyncio.to_thread(state.ledger.flush, 5)
    since = time.time() - window_hours * 3600
    result = await asyncio.to_thread(run_audit, state.ledger.engine, state.config.routing, since)
    return result.as_dict()


@router.post("/admin/reload", dependencies=Admin)
async def reload_configuration(request: Request) -> dict:
    config, shared = request.app.state.config, request.app.state.shared
    table = await config.reload_routing()
    swapped = await config.reload_profile()
    announced = await shared.announcer.announce() if shared else None  # the other replicas re-read their files
    return {"status": "reloaded", "routing": str(config.routing_path), "features": sorted(table.features),
            "profile": str(config.runners.path), "tiers_swapped": swapped, "announced_to": announced}
