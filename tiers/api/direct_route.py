"""The wire endpoints' route class: the same endpoint, its four arguments found without FastAPI's solver.

Every wire endpoint takes the same arguments: the body model, the request, the caller's key and the
`x-feature` header. FastAPI finds them by walking the endpoint's dependency tree on every request, and
parses a JSON body into Python objects before pydantic validates them again: on a one-token completion
that was a tenth of the gateway's CPU (docs/benchmarks.md). This route fills them directly, with the
same outcomes: a good body is validated from its bytes by pydantic-core in one pass; anything else
takes FastAPI's own steps in its order (JSON parsed, key checked, body validated), so every error is
the one FastAPI raises and the app's handlers give it the same shape. OpenAPI still documents each endpoint from its signature.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Any, get_type_hints

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from tiers.api.deps import secret_of
from tiers.auth import ClientKey

ARGUMENTS = ("body", "request", "key", "x_feature")


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule: a body is parsed as JSON only under application/json or application/*+json."""
    if not content_type:
        return False
    main, _, subtype = content_type.split(";", 1)[0].strip().lower().partition("/")
    return main == "application" and (subtype == "json" or subtype.endswith("+json"))


def fast(model: type[BaseModel], raw: bytes, content_type: str | None) -> BaseModel | None:
    """The body, validated from its bytes in one pass; None when that fails and FastAPI's steps must decide."""
    if raw and _is_json(content_type):
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            return None
    return None


def solved(model: type[BaseModel], raw: bytes, content_type: str | None,
           authenticate: Callable[[], ClientKey | None]) -> tuple[ClientKey | None, BaseModel]:
    """FastAPI's own steps, in its order: the JSON parsed, then the key checked, then the body validated.

    Only requests that failed the fast path come here, so their errors are FastAPI's, word for word.
    """
    data: Any = None
    if raw and _is_json(content_type):
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                           "input": {}, "ctx": {"error": exc.msg}}]) from None
        except UnicodeDecodeError:
            raise HTTPException(400, "There was an error parsing the body") from None
    elif raw:
        data = raw
    key = authenticate()
    if not raw:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        return key, model.model_validate(data, from_attributes=True)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
                                     ) from None


class DirectRoute(APIRoute):
    """An APIRoute whose handler calls the endpoint with (body, request, key, x_feature) filled in directly, and
    sends the Response it returns."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint
        if tuple(inspect.signature(endpoint).parameters) != ARGUMENTS:
            raise TypeError(f"{endpoint.__name__} must take exactly {ARGUMENTS} to be served by DirectRoute")
        hints = get_type_hints(endpoint)
        returns = hints.get("return")
        if not (isinstance(returns, type) and issubclass(returns, Response)):
            raise TypeError(f"{endpoint.__name__} must be annotated `-> Response` to be served by DirectRoute: "
                            "its result is sent as it is, with no response model to encode it")
        model = hints["body"]

        async def handler(request: Request) -> Response:
            headers = request.headers
            raw, content_type = await request.body(), headers.get("content-type")

            def authenticate() -> ClientKey | None:
                return request.app.state.access.authenticate(secret_of(headers.get("authorization"),
                                                                       headers.get("x-api-key")))

            body = fast(model, raw, content_type)
            if body is None:
                key, body = solved(model, raw, content_type, authenticate)
            else:
                key = authenticate()
            return await endpoint(body, request, key, headers.get("x-feature"))

        return handler
