"""The HTTP client of every runner that forwards to a server (hosted APIs, vLLM): one pooled aiohttp session each.

aiohttp rather than httpx because a call costs about half the CPU (0.8-1.1 ms against 1.7-1.9 ms here,
benchmarks/gateway_saturation.py measures the gateway around it), and that CPU is the gateway's ceiling
when the tier itself is fast. Bodies are encoded and decoded with orjson. A session binds to the event
loop it was made on, so it is made on first use, inside the loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

# What a broken transport raises: refused or dropped connections, socket timeouts, a torn body.
TRANSPORT_ERRORS = (aiohttp.ClientError,)
# No byte for `read_timeout_s` (the session's sock_read): a transport error and a TimeoutError at once.
READ_TIMEOUT = aiohttp.SocketTimeoutError
JSON_HEADERS = {"content-type": "application/json"}


def session(headers: dict[str, str], *, connect_timeout_s: float, read_timeout_s: float,
            max_connections: int) -> aiohttp.ClientSession:
    """Connect and per-read timeouts as the profile sets them; the callers bound whole attempts themselves.
    No cookie jar: one client's upstream cookies must never ride along on another client's request."""
    return aiohttp.ClientSession(
        headers=headers, cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s),
        connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0))


def dumps(obj: Any) -> bytes:
    """orjson, or the standard library for what orjson refuses (an integer past 64 bits in a tool's schema)."""
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


async def lines(response: aiohttp.ClientResponse, deadline: float | None = None) -> AsyncIterator[str]:
    """The body's lines without their ends (LF or CRLF), however the server chunks them; no line length limit.

    With `deadline` (the loop's clock), each read from the network must end by then or TimeoutError is raised.
    The timer is per read, not per line: the lines one read brought need none of their own."""
    buffer, content = b"", response.content
    while True:
        if deadline is None:
            chunk = await content.readany()
        else:
            async with asyncio.timeout_at(deadline):
                chunk = await content.readany()
        if not chunk:
            break
        buffer += chunk
        if b"\n" not in chunk:
            continue
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            yield line.removesuffix(b"\r").decode("utf-8", "replace")
    if buffer:
        yield buffer.removesuffix(b"\r").decode("utf-8", "replace")
