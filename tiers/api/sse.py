"""Server-sent events for any wire API: its own event encoding, its own end marker, its own error event.

Whatever happens mid-stream becomes the API's error event rather than a cut connection, and the
request's log-line fields are copied onto the request when the stream ends. The stream is closed
(so its row is recorded) even when the client leaves before the first event is sent: Starlette
may cancel the body before it starts, so closing is also the response's background task.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from hardware.errors import TierRunnerError
from runners.answer import Delta
from tiers.api.errors import ApiError, error_json
from tiers.serving.service import Reply


def log_fields(request: Request, reply: Reply) -> None:
    for key, value in reply.summary.fields.items():
        setattr(request.state, key, value)


def sse_response(request: Request, reply: Reply, encode: Callable[[Delta], Iterable[str]],
                 end: Callable[[], Iterable[str]], error_event: Callable[[bytes], str]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        deltas = reply.deltas
        try:
            async for delta in deltas:
                for event in encode(delta):
                    yield event
            for event in end():
                yield event
        except TierRunnerError as exc:
            yield error_event(error_json(request.url.path, ApiError.of(exc)))
        finally:
            await deltas.aclose()
            log_fields(request, reply)

    return StreamingResponse(events(), media_type="text/event-stream", headers=reply.headers,
                             background=BackgroundTask(reply.deltas.aclose))
