"""GET /v1/recommendations and GET /dashboard: what the ledger and the shadow say about each feature's tier.

Both need the admin key when keys are on. The dashboard also takes it as the password of HTTP Basic auth
(any user name), so a browser asks for it once and sends it again on each of the page's reloads.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse

from runners.errors import InvalidRequest
from tiers.api.deps import Admin, bearer
from tiers.audit import run_audit
from tiers.dashboard import render_dashboard
from tiers.errors import Forbidden, Unauthorized
from tiers.recommend import recommendations

router = APIRouter()
WINDOW_HOURS = Query(default=24 * 7, gt=0, le=24 * 366, description="how far back the ledger is read")


def _prices(state) -> dict:
    runners = state.config.runners
    return {tier: runners.price(tier) for tier in runners.tiers()}


def _window(state, window_hours: float) -> tuple[float, float]:
    if not 0 < window_hours <= 24 * 366:
        raise InvalidRequest("window_hours must be in (0, 8784]", param="window_hours")
    until = time.time()
    return until - window_hours * 3600, until


@router.get("/v1/recommendations", dependencies=Admin)
async def tier_recommendations(request: Request, window_hours: float = WINDOW_HOURS) -> dict:
    state = request.app.state
    await asyncio.to_thread(state.ledger.flush, 5)
    since, until = _window(state, window_hours)
    recs = await asyncio.to_thread(recommendations, state.ledger.engine, state.config.routing, _prices(state),
                                   since, until)
    return {"since": since, "until": until, "applied": False, "recommendations": [r.as_dict() for r in recs]}


def _secret(authorization: str | None, fallback: str | None) -> str | None:
    """A Basic password (the admin key) when the browser sent one, else what `bearer` found."""
    if authorization and authorization.lower().startswith("basic "):
        try:
            return base64.b64decode(authorization[6:].strip()).decode("utf-8").partition(":")[2] or None
        except (binascii.Error, UnicodeDecodeError):
            return None
    return fallback


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, authorization: Annotated[str | None, Header()] = None,
                    x_api_key: Annotated[str | None, Header()] = None, window_hours: float = WINDOW_HOURS,
                    refresh_s: int = Query(default=30, ge=5, le=3600, description="seconds between reloads")):
    state = request.app.state
    try:
        state.access.require_admin(_secret(authorization, await bearer(authorization, x_api_key)))
    except Unauthorized as exc:
        return HTMLResponse(f"<!doctype html><title>401</title><p>{html.escape(exc.message)}</p>", status_code=401,
                            headers={"WWW-Authenticate": 'Basic realm="tier-runner dashboard", charset="UTF-8"'})
    except Forbidden as exc:
        return HTMLResponse(f"<!doctype html><title>403</title><p>{html.escape(exc.message)}</p>", status_code=403)
    await asyncio.to_thread(state.ledger.flush, 5)
    since, until = _window(state, window_hours)
    table = state.config.routing

    def build() -> str:
        audit = run_audit(state.ledger.engine, table, since, until)
        recs = recommendations(state.ledger.engine, table, _prices(state), since, until)
        return render_dashboard(audit, table, recs, refresh_s)

    return HTMLResponse(await asyncio.to_thread(build))
