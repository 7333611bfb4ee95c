"""Every error leaves the server in the wire API's own shape; the status comes from the exception type.

Each wire API registers the shape of its error body for its paths (`register_shape`): OpenAI's
`{"error": {message, type, param, code}}` is the default; Anthropic's Messages endpoint registers
its `{"type": "error", "error": {type, message}}`. The handlers here pick the shape by path, so a
validation error, a 404 or an unexpected exception on any route looks like that API's errors.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hardware.errors import TierRunnerError
from runners.wire.openai_chat_protocol import ErrorBody, ErrorResponse

log = logging.getLogger("tier_runner.errors")

_HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable"}


@dataclass(frozen=True)
class ApiError:
    """An error before it is shaped: what every wire API's error body is made from."""

    status: int
    message: str
    error_type: str
    param: str | None = None
    code: str | None = None

    @classmethod
    def of(cls, exc: TierRunnerError) -> ApiError:
        return cls(exc.status_code, exc.message, exc.error_type, exc.param, exc.code)


def openai_body(error: ApiError) -> dict:
    return ErrorResponse(error=ErrorBody(message=error.message, type=error.error_type, param=error.param,
                                         code=error.code)).model_dump()


Shape = Callable[[ApiError], dict]
_SHAPES: list[tuple[str, Shape]] = []


def register_shape(path_prefix: str, shape: Shape) -> None:
    """Errors on paths under `path_prefix` use `shape` (longest prefix wins)."""
    _SHAPES.append((path_prefix, shape))
    _SHAPES.sort(key=lambda entry: -len(entry[0]))


def shape_for(path: str) -> Shape:
    return next((shape for prefix, shape in _SHAPES if path.startswith(prefix)), openai_body)


def error_json(path: str, error: ApiError) -> bytes:
    return json.dumps(shape_for(path)(error)).encode()


def error_response(path: str, error: ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(shape_for(path)(error), status_code=error.status, headers=headers)


def error_for(path: str, exc: TierRunnerError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after", None)
    headers = {"retry-after": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return error_response(path, ApiError.of(exc), headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TierRunnerError)
    async def _ours(request: Request, exc: TierRunnerError) -> JSONResponse:
        request.state.error = exc.code or exc.error_type
        return error_for(request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif first.get("type") == "extra_forbidden":
            message = f"unrecognized request argument supplied: {param}"
        elif param:
            message = f"{param}: {message}"
        request.state.error = "invalid_request"
        return error_response(request.url.path, ApiError(400, message, "invalid_request_error", param, "invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = 400 if exc.status_code == 422 else exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else "invalid request"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see docs/endpoints.md for the endpoints"
        request.state.error = f"http_{status}"
        return error_response(request.url.path, ApiError(status, message, _HTTP_TYPES.get(status, "server_error")),
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        request.state.error = "internal_error"
        return error_response(request.url.path, ApiError(500, "internal server error; the request was not completed and "
                                                              "may be retried", "server_error", code="internal_error"))
