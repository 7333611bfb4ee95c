"""A closed-loop HTTP/1.1 load generator light enough to share two cores with what it measures.

N clients each keep one connection open and send the next request as soon as the previous answer
is in (a closed loop: it measures saturation, not a paced rate). Requests are prebuilt bytes and
answers are parsed only as far as the status line, the headers and Content-Length (or the chunk sizes
of a stream, read to its end), so the generator costs tens of microseconds per request where httpx
costs a millisecond or more.
Run it as its own process (`python benchmarks/loadgen.py URL --clients 16 --seconds 10 --body JSON`);
it prints one JSON line: requests, errors, req/s and latency percentiles.
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


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = 0, False
    for line in head.split(b"\r\n")[1:]:
        lower = line.lower()
        if lower[:15] == b"content-length:":
            length = int(line[15:])
        elif lower[:18] == b"transfer-encoding:" and b"chunked" in lower:
            chunked = True
    if chunked:  # a stream: chunks until the empty one
        while size := int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readexactly(2)
    elif length:
        await reader.readexactly(length)
    return status


async def client(url: str, request: bytes, until: float, latencies: list[float], errors: list[int]) -> None:
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        while time.perf_counter() < until:
            started = time.perf_counter()
            writer.write(request)
            status = await read_response(reader)
            latencies.append((time.perf_counter() - started) * 1000)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def run(url: str, body: bytes, headers: dict[str, str], clients: int, seconds: float) -> dict:
    request = build_request(url, body, headers)
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    await asyncio.gather(*(client(url, request, started + seconds, latencies, errors) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")

    return {"requests": len(latencies), "errors": len(errors), "error_statuses": sorted(set(errors)),
            "seconds": round(elapsed, 3), "rps": round(len(latencies) / elapsed, 1),
            "p50_ms": round(statistics.median(ordered), 3) if ordered else None,
            "p99_ms": round(pct(0.99), 3), "max_ms": round(ordered[-1], 3) if ordered else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--body", required=True, help="JSON body to POST")
    parser.add_argument("--header", action="append", default=[], help="name: value (repeatable)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(run(args.url, args.body.encode(), headers, args.clients, args.seconds))))


if __name__ == "__main__":
    main()
