"""What every route needs from a request: the caller's key, checked, and the app's shared objects.

Dependencies are `async def`: FastAPI runs a plain `def` dependency in a worker thread, a hop that
cost more than the whole check (benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from tiers.auth import ClientKey


def secret_of(authorization: str | None, x_api_key: str | None) -> str | None:
    """The caller's secret from `Authorization: Bearer` (OpenAI SDKs) or `x-api-key` (Anthropic SDKs)."""
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return x_api_key


async def bearer(authorization: Annotated[str | None, Header()] = None,
                 x_api_key: Annotated[str | None, Header()] = None) -> str | None:
    return secret_of(authorization, x_api_key)


async def client_key(request: Request, secret: str | None = Depends(bearer)) -> ClientKey | None:
    return request.app.state.access.authenticate(secret)


async def admin_key(request: Request, secret: str | None = Depends(bearer)) -> None:
    request.app.state.access.require_admin(secret)


Client = Annotated[ClientKey | None, Depends(client_key)]
Admin = [Depends(admin_key)]
