"""A light HTTP/1.1 load generator that can share two cores with what it measures: closed loop or paced.

N clients each keep one connection open. Closed loop (the default): each sends the next request as soon
as the previous answer is in, which measures saturation. Paced (`--rate R`): the clients share R requests
a second between them, each request on its own schedule, so the rate is below saturation and the
latencies are those of a server that keeps up. A paced request that must wait for its connection counts
from the time it was due, so a server that falls behind shows it in the tail instead of slowing the
schedule down (no coordinated omission).
Requests are prebuilt bytes and answers are parsed only as far as the status line, the headers and
Content-Length (or the chunk sizes of a stream, read to its end), so the generator costs tens of
microseconds per request where httpx costs a millisecond or more. Each answer also gives its time to
first byte: the first chunk of a chunked (streamed) body, else the status line.
Run it as its own process (`python benchmarks/loadgen.py URL --clients 16 --seconds 10 --body JSON [--rate R]`);
it prints one JSON line: requests, errors, req/s, and latency and time-to-first-byte percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit


def build_request(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.hostname}:{parts.port}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, float]:
    """The status, and when the answer's first byte came (perf_counter)."""
    head = await reader.readuntil(b"\r\n\r\n")
    first = time.perf_counter()
    status = int(head[9:12])
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        lower = line.lower()
        if lower[:15] == b"content-length:":
            length = int(line[15:])
        elif lower[:18] == b"transfer-encoding:" and b"chunked" in lower:
            chunked = True
    if chunked:  # a stream: chunks until the empty one
        size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        first = time.perf_counter()
        while size:
            await reader.readexactly(size + 2)
            size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
        await reader.readexactly(2)
    elif length:
        await reader.readexactly(length)
    return status, first


class Schedule:
    """`rate` request times a second from `start`, handed to whichever client asks next."""

    def __init__(self, start: float, rate: float):
        self.start, self.interval, self.sent = start, 1 / rate, 0

    async def next(self) -> float:
        at = self.start + self.sent * self.interval
        self.sent += 1
        if (wait := at - time.perf_counter()) > 0:
            await asyncio.sleep(wait)
        return at


async def client(url: str, request: bytes, until: float, due: Schedule | None, latencies: list[float],
                 ttfbs: list[float], errors: list[int]) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while True:
            started = time.perf_counter() if due is None else await due.next()
            if started >= until:
                break
            writer.write(request)
            status, first = await read_response(reader)
            latencies.append((time.perf_counter() - started) * 1000)
            ttfbs.append((first - started) * 1000)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


def percentiles(name: str, values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {f"{name}_p50_ms": None, f"{name}_p99_ms": None, f"{name}_max_ms": None}
    return {f"{name}_p50_ms": round(statistics.median(ordered), 3),
            f"{name}_p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3),
            f"{name}_max_ms": round(ordered[-1], 3)}


async def run(url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float,
              rate: float | None = None) -> dict:
    request = build_request(url, body, headers)
    latencies: list[float] = []
    ttfbs: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    due = Schedule(started, rate) if rate else None
    await asyncio.gather(*(client(url, request, started + seconds, due, latencies, ttfbs, errors)
                           for _ in range(clients)))
    elapsed = time.perf_counter() - started
    latency = percentiles("latency", latencies)
    return {"requests": len(latencies), "errors": len(errors), "error_statuses": sorted(set(errors)),
            "seconds": round(elapsed, 3), "rps": round(len(latencies) / elapsed, 1), "rate": rate,
            "p50_ms": latency["latency_p50_ms"], "p99_ms": latency["latency_p99_ms"],
            "max_ms": latency["latency_max_ms"], **percentiles("ttfb", ttfbs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="JSON body to POST")
    parser.add_argument("--header", action="append", default=[], help="name: value (repeatable)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=None, help="requests a second shared by the clients (paced)")
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, args.body.encode(), headers, args.clients, args.seconds, args.rate))))


if __name__ == "__main__":
    main()
