"""The floor of any Python gateway on this stack: a bare ASGI app on uvicorn (uvloop, httptools) that forwards
each body to the upstream with one pooled aiohttp session and sends back its bytes.

No routing, keys, ledger, metrics or log line: what it costs per request is what the HTTP server and the
upstream client alone cost, so benchmarks/gateway_saturation.py can say how much of ours is ours.
Usage: python benchmarks/floor_proxy.py PORT UPSTREAM_BASE_URL   (GET anything but the one POST path: 200)
"""

from __future__ import annotations

import sys

import aiohttp
import uvicorn

JSON = [(b"content-type", b"application/json")]


def make_app(upstream: str):
    url = upstream.rstrip("/") + "/chat/completions"
    session: list[aiohttp.ClientSession] = []  # made on first use, inside the server's loop

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup: nothing to start, the session is made on first use
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            if session:
                await session[0].close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        data, status = b'{"status":"ready"}', 200
        if scope["method"] == "POST":
            if not session:
                session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))
            async with session[0].post(url, data=body, headers={"content-type": "application/json"}) as response:
                data, status = await response.read(), response.status
        await send({"type": "http.response.start", "status": status,
                    "headers": [*JSON, (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
