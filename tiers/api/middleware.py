"""ASGI middleware: a request id on every response, one log line per request, and the body-size limit."""

from __future__ import annotations

import logging
import time

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runners.answer import new_id
from tiers.api.errors import ApiError, error_json

access_log = logging.getLogger("tier_runner.requests")

# Request fields the route may record for the log line (never prompt or completion text).
LOGGED_FIELDS = ("feature", "tier", "model", "prompt_tokens", "completion_tokens", "runner_ms", "error")


class RequestContextMiddleware:
    """Assigns x-request-id, measures latency, and logs a structured line when the response ends.

    When the route recorded how long the runners took (`runner_ms`, whole answers only), the response
    carries `Server-Timing: gateway;dur=..., runner;dur=...`, so what the gateway itself adds is
    visible per request, to clients and to benchmarks/gateway_overhead.py.
    """

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{new_id()}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", [])) + [(b"x-request-id", request_id.encode())]
                runner_ms = state.get("runner_ms")
                if runner_ms is not None:
                    gateway_ms = (time.perf_counter() - started) * 1000 - runner_ms
                    headers.append((b"server-timing", f"gateway;dur={gateway_ms:.3f}, runner;dur={runner_ms:.3f}".encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            line = {"event": "request", "request_id": request_id, "method": scope["method"], "path": scope["path"],
                    "status": status, "ms": round((time.perf_counter() - started) * 1000, 2)}
            line.update({k: state[k] for k in LOGGED_FIELDS if state.get(k) is not None})
            access_log.info(orjson.dumps(line).decode())


class BodyLimitMiddleware:
    """Refuses bodies over the limit with 413 before any of it is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._too_large(scope, send)
                return
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        scope.setdefault("state", {})["error"] = "body_too_large"
        error = ApiError(413, f"request body is larger than {self.max_bytes} bytes; send less, or raise max_body_bytes",
                         "invalid_request_error", code="request_too_large")
        payload = error_json(scope["path"], error)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})
