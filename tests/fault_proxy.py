"""A real HTTP proxy on 127.0.0.1 that injects faults in front of a real upstream, one planned fault per request.

Faults: `Fault.status(429, retry_after=2)`, `Fault.status(500)`, `Fault.stall(5)` (no answer for 5 s),
`Fault.cut(after_lines=3)` (forward the upstream's stream, then drop the connection),
`Fault.hang(after_lines=2, seconds=5)` (forward that many events, then send nothing for that long),
`Fault.drip(seconds=0.4)` (forward the stream, waiting that long before each event),
`Fault.no_done()` (forward the stream but end it cleanly without its `[DONE]` line),
`Fault.empty_stream()` (a 200 event stream that is only `[DONE]`), and
`Fault.echo_key()` (a 401 whose message repeats the key the client sent, as some providers do).
With no fault planned, the request passes through untouched. Health probes (`/health`, `/v1/models`)
always pass and take no planned fault, so a runner's background check cannot steal a test's fault.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.conftest import free_port

PROBES = frozenset({"/health", "/v1/models"})


@dataclass(frozen=True)
class Fault:
    kind: str
    code: int = 0
    retry_after: float | None = None
    seconds: float = 0.0
    after_lines: int = 0

    @classmethod
    def status(cls, code: int, retry_after: float | None = None) -> Fault:
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def stall(cls, seconds: float) -> Fault:
        return cls("stall", seconds=seconds)

    @classmethod
    def cut(cls, after_lines: int) -> Fault:
        return cls("cut", after_lines=after_lines)

    @classmethod
    def hang(cls, after_lines: int, seconds: float) -> Fault:
        return cls("hang", seconds=seconds, after_lines=after_lines)

    @classmethod
    def drip(cls, seconds: float) -> Fault:
        return cls("drip", seconds=seconds)

    @classmethod
    def echo_key(cls) -> Fault:
        return cls("echo_key")

    @classmethod
    def no_done(cls) -> Fault:
        return cls("no_done")

    @classmethod
    def empty_stream(cls) -> Fault:
        return cls("empty_stream")


@dataclass
class Seen:
    at: float
    path: str
    headers: dict[str, str]
    fault: str


class ConnectionCut(Exception):
    """Raised inside a streaming body: the server drops the connection without ending the response."""


@dataclass
class FaultProxy:
    upstream: str
    plan: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fault proxy did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def arrivals(self) -> list[float]:
        return [s.at for s in self.seen]

    async def _handle(self, request: Request) -> Response:
        body = await request.body()
        probe = request.url.path in PROBES  # a runner's own health checks never take a planned fault
        fault = self.plan.pop(0) if self.plan and not probe else Fault("pass")
        self.seen.append(Seen(time.monotonic(), request.url.path, dict(request.headers), fault.kind))
        if fault.kind == "status":
            headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            error = {"type": "error", "error": {"type": "injected", "message": f"injected HTTP {fault.code}"}}
            return JSONResponse(error, status_code=fault.code, headers=headers)
        if fault.kind == "stall":
            await asyncio.sleep(fault.seconds)
            return JSONResponse({"error": {"message": "stalled"}}, status_code=504)
        if fault.kind == "echo_key":
            sent = request.headers.get("authorization") or request.headers.get("x-api-key") or ""
            error = {"type": "error", "error": {"type": "authentication_error",
                                                "message": f"Incorrect API key provided: {sent}"}}
            return JSONResponse(error, status_code=401)
        if fault.kind == "empty_stream":
            return Response("data: [DONE]\n\n", media_type="text/event-stream")
        headers = {k: v for k, v in request.headers.items() if k not in ("host", "content-length")}
        client = httpx.AsyncClient(timeout=120)
        upstream = await client.send(client.build_request(request.method, self.upstream + request.url.path,
                                                          headers=headers, content=body), stream=True)

        async def forward():
            try:
                lines = 0
                async for line in upstream.aiter_lines():
                    if fault.kind == "no_done" and line.strip() == "data: [DONE]":
                        return
                    if fault.kind == "drip" and line.startswith("data:"):
                        await asyncio.sleep(fault.seconds)
                    yield line + "\n"
                    if line.startswith("data:"):
                        lines += 1
                        if fault.kind == "cut" and lines >= fault.after_lines:
                            await asyncio.sleep(0.05)  # let the bytes so far leave first
                            raise ConnectionCut()
                        if fault.kind == "hang" and lines == fault.after_lines:
                            await asyncio.sleep(fault.seconds)
            finally:
                await upstream.aclose()
                await client.aclose()

        media = upstream.headers.get("content-type", "application/json")
        return StreamingResponse(forward(), status_code=upstream.status_code, media_type=media)
