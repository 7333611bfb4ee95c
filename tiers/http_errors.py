"""Every error leaves the server as OpenAI-style JSON; the status comes from the exception type."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from hardware.errors import TierRunnerError
from runners.protocol import ErrorBody, ErrorResponse

log = logging.getLogger("tier_runner.errors")

_HTTP_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
               429: "rate_limit_error", 503: "service_unavailable"}


def error_response(status: int, message: str, *, error_type: str, param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(message=message, type=error_type, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def error_for(exc: TierRunnerError) -> JSONResponse:
    retry_after = getattr(exc, "retry_after", None)
    headers = {"retry-after": str(max(1, math.ceil(retry_after)))} if retry_after is not None else None
    return error_response(exc.status_code, exc.message, error_type=exc.error_type, param=exc.param, code=exc.code,
                          headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TierRunnerError)
    async def _ours(request: Request, exc: TierRunnerError) -> JSONResponse:
        request.state.error = exc.code or exc.error_type
        return error_for(exc)

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
        return error_response(400, message, error_type="invalid_request_error", param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = 400 if exc.status_code == 422 else exc.status_code
        message = exc.detail if isinstance(exc.detail, str) else "invalid request"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}; see the README for the endpoints"
        request.state.error = f"http_{status}"
        return error_response(status, message, error_type=_HTTP_TYPES.get(status, "server_error"),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        request.state.error = "internal_error"
        return error_response(500, "internal server error; the request was not completed and may be retried",
                              error_type="server_error", code="internal_error")
