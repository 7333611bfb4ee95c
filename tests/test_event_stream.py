"""EventStream at the ASGI level: how a stream ends when the body finishes, the client leaves, or receive() fails.

uvicorn's receive() does not fail, so the last case cannot be reached through a real server; it is driven here
through the ASGI callables themselves. Whatever the end, the background close (which records the stream's
ledger row) runs once, and a failing receive() reaches the server as the exception it is rather than being
dropped with the watcher task ("Task exception was never retrieved").
"""

from __future__ import annotations

import asyncio

import pytest
from starlette.background import BackgroundTask

from tiers.api.sse import EventStream


class Harness:
    def __init__(self, events: int):
        self.sent: list[dict] = []
        self.closed = 0
        self.events = events

    async def body(self):
        for i in range(self.events):
            yield f"data: {i}\n\n"
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        self.closed += 1

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    async def run(self, receive) -> None:
        response = EventStream(self.body(), media_type="text/event-stream", background=BackgroundTask(self.close))
        await response({"type": "http", "method": "POST", "path": "/"}, receive, self.send)

    @property
    def bodies(self) -> int:
        return sum(1 for m in self.sent if m["type"] == "http.response.body" and m.get("body"))


def receive_then(after_s: float, then):
    calls = 0

    async def receive() -> dict:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(after_s)
        return then()

    return receive


async def test_a_body_that_finishes_sends_everything_and_closes_once():
    h = Harness(events=3)
    await h.run(receive_then(3600, lambda: {"type": "http.disconnect"}))
    assert h.bodies == 3
    assert h.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}
    assert h.closed == 1


async def test_a_client_that_leaves_stops_the_body_and_closes_once():
    h = Harness(events=10_000)
    await h.run(receive_then(0.05, lambda: {"type": "http.disconnect"}))
    assert 0 < h.bodies < 10_000
    assert h.closed == 1


async def test_a_failing_receive_stops_the_body_closes_once_and_reaches_the_server():
    def broken() -> dict:
        raise RuntimeError("the connection's reader failed")

    h = Harness(events=10_000)
    with pytest.raises(RuntimeError, match="reader failed"):
        await h.run(receive_then(0.05, broken))
    assert 0 < h.bodies < 10_000
    assert h.closed == 1
