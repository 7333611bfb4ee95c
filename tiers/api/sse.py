"""Server-sent events for any wire API: its own event encoding, its own end marker, its own error event.

Whatever happens mid-stream becomes the API's error event rather than a cut connection, and the
request's log-line fields are copied onto the request when the stream ends. The stream is closed
(so its row is recorded) even when the client leaves before the first event is sent: the body may
be cancelled before it starts, so closing is also the response's background task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Receive, Scope, Send

from hardware.errors import TierRunnerError
from runners.answer import Delta
from tiers.api.errors import ApiError, error_json
from tiers.serving.service import Reply


class EventStream(StreamingResponse):
    """A StreamingResponse that notices the client leaving without an anyio task group per response.

    uvicorn speaks ASGI 2.3, whose `send` to a closed connection is silently dropped, so Starlette runs
    the body and a disconnect listener in a task group: about 170 us a stream on this machine's gateway,
    against 10 us for the body alone. Here one plain task waits for `http.disconnect` and cancels the
    body's task (freeing a Tier 3 slot at once, as before); the body runs on the request's own task."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body_task, left = asyncio.current_task(), False

        async def until_disconnect() -> None:
            nonlocal left
            try:
                while (await receive())["type"] != "http.disconnect":
                    pass
            finally:  # the client left, or receive() failed (as Starlette does, stop): not when the body ended first
                if not asyncio.current_task().cancelling():
                    left = True
                    body_task.cancel()

        watcher = asyncio.ensure_future(until_disconnect())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            if not left or body_task.uncancel():  # cancelled for another reason too (shutdown): pass it on
                raise
        finally:
            watcher.cancel()
        if self.background is not None:
            await self.background()  # the stream's row is recorded however it ended
        if watcher.done() and not watcher.cancelled() and watcher.exception() is not None:
            raise watcher.exception()  # to the server, which logs it, rather than "never retrieved" at exit


def log_fields(request: Request, reply: Reply) -> None:
    for key, value in reply.summary.fields.items():
        setattr(request.state, key, value)


def sse_response(request: Request, reply: Reply, encode: Callable[[Delta], Iterable[str]],
                 end: Callable[[], Iterable[str]], error_event: Callable[[bytes], str]) -> EventStream:
    async def events() -> AsyncIterator[str]:
        """One body message per delta however many events it makes (a first delta is the role and the text):
        each message is a send through every middleware and a write to the socket."""
        deltas = reply.deltas
        try:
            async for delta in deltas:
                if body := "".join(encode(delta)):
                    yield body
            if body := "".join(end()):
                yield body
        except TierRunnerError as exc:
            yield error_event(error_json(request.url.path, ApiError.of(exc)))
        finally:
            await deltas.aclose()
            log_fields(request, reply)

    return EventStream(events(), media_type="text/event-stream", headers=reply.headers,
                       background=BackgroundTask(reply.deltas.aclose))
