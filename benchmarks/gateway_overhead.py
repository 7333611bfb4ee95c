"""What the gateway adds to a request: ours vs LiteLLM's proxy in front of the same upstream, and on Tier 3.

Part 1. One-token chat completions are paced at --rate req/s (open loop) to three paths in turn, round
after round so that machine noise falls on all of them alike:
  direct   the upstream itself (benchmarks/openai_stub.py: answers at once, no framework)
  floor    a bare ASGI app on the same uvicorn forwarding with one aiohttp session (benchmarks/floor_proxy.py):
           what a second HTTP hop alone adds, the part of ours no change to our code can remove (it reads the
           upstream's whole answer before it sends, which for the stub's one-token stream is its first byte too)
  ours     our gateway, `model: tier:1`, Tier 1 = the hosted runner pointed at the upstream; client key
           check, routing, ledger row (spool + SQLite), metrics, headers and the request log line included
  litellm  LiteLLM's proxy (`make litellm-setup`) with a master key, routed to the same upstream
  baseline  with --baseline REF: ours as served by the code of another git commit (a worktree of it)
overhead = path - direct, at p50 and at p99 of all rounds together. Both proxies also say what they
added themselves: ours in `Server-Timing: gateway;dur=`, LiteLLM in `x-litellm-overhead-duration-ms`.
Streams: the same paced load with `"stream": true`; the sample is the time to the answer's first byte, and
the added time is ours (or LiteLLM's) minus direct.
Part 2. The same paced load on `tier:3` (llama.cpp in process, the real SmolLM2): what the client
waits, and the Server-Timing split between the gateway and the runner.
Usage: python benchmarks/gateway_overhead.py [--rate 100] [--requests 300] [--rounds 5] [--skip-litellm]
       [--skip-tier3] [--baseline REF]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gateway_saturation import baseline_server, remove_baseline  # noqa: E402
from benchmarks.harness import pct, start_stub  # noqa: E402

from tests.conftest import ChildProcess, ServerProcess, free_port  # noqa: E402  (the tests' subprocess helper)
from tests.litellm_proxy import LITELLM, MODEL, LiteLLMProxy  # noqa: E402

from tiers.auth import hash_key  # noqa: E402

CLIENT_KEY = "sk-overhead-bench-client-key-0001"  # both proxies check a client key, as they would in production
BODY = {"messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 1, "temperature": 0}


@dataclass
class Sample:
    latency_ms: float
    self_reported_ms: float | None  # what the proxy says it added (ours: gateway;dur, LiteLLM: its header)
    runner_ms: float | None = None


def self_reported(headers: httpx.Headers) -> tuple[float | None, float | None]:
    if "server-timing" in headers:
        timings = dict(part.strip().split(";dur=") for part in headers["server-timing"].split(","))
        return float(timings["gateway"]), float(timings["runner"])
    if "x-litellm-overhead-duration-ms" in headers:
        return float(headers["x-litellm-overhead-duration-ms"]), None
    return None, None


async def paced(client: httpx.AsyncClient, url: str, model: str, rate: float, n: int,
                stream: bool = False) -> list[Sample]:
    """`n` requests at `rate` a second; each sample is its latency, or with `stream` its time to first byte."""
    samples: list[Sample] = []
    body = {**BODY, "model": model, **({"stream": True} if stream else {})}

    async def one() -> None:
        t0 = time.perf_counter()
        if stream:
            async with client.stream("POST", url, json=body) as response:
                response.raise_for_status()
                first = None
                async for _ in response.aiter_raw():
                    first = first or time.perf_counter()
            samples.append(Sample((first - t0) * 1000, None))
            return
        response = await client.post(url, json=body)
        latency_ms = (time.perf_counter() - t0) * 1000
        response.raise_for_status()
        samples.append(Sample(latency_ms, *self_reported(response.headers)))

    tasks = []
    t_start = time.perf_counter()
    for i in range(n):
        delay = t_start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return samples


async def measure(paths: dict[str, tuple[str, str]], rate: float, n: int, rounds: int,
                  stream: bool = False) -> dict[str, list[Sample]]:
    results: dict[str, list[Sample]] = {name: [] for name in paths}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64),
                                 headers={"authorization": f"Bearer {CLIENT_KEY}"}) as client:
        for name, (url, model) in paths.items():  # warm-up: connections, caches, first-request imports
            await paced(client, url, model, rate, 50, stream)
        for _ in range(rounds):
            for name, (url, model) in paths.items():
                results[name] += await paced(client, url, model, rate, n, stream)
                await asyncio.sleep(2)  # let a proxy's after-response work (logging, spend) end before the next path
    return results


def p50_p99(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} | {pct(values, 0.99):.2f}" if values else "- | -"


def keys_file(root: Path) -> Path:
    keys = root / "keys.yaml"
    keys.write_text(f"admin_sha256: {hash_key('sk-overhead-admin')}\n"
                    f"keys: [{{id: bench, sha256: {hash_key(CLIENT_KEY)}, direct_tiers: true}}]\n")
    return keys


def proxy_overhead(args, root: Path) -> tuple[dict[str, list[Sample]], dict[str, list[Sample]]]:
    """Part 1 on every path: whole answers, then streams (their time to first byte)."""
    servers: list[ChildProcess] = []
    try:
        stub = start_stub(root)
        servers.append(stub)
        upstream = f"{stub.base_url}/v1"
        paths = {"direct": (f"{upstream}/chat/completions", "stub")}
        port = free_port()
        floor = ChildProcess([sys.executable, str(ROOT / "benchmarks" / "floor_proxy.py"), str(port), upstream],
                             port=port, log_path=root / "floor.log")
        servers.append(floor)
        floor.wait_ready()
        paths["floor"] = (f"{floor.base_url}/v1/chat/completions", "stub")

        profile = root / "overhead.yaml"
        profile.write_text(f"""
description: gateway overhead benchmark; Tier 1 = the fixed-answer upstream
devices: {{cpu: {{kind: cpu}}}}
tiers:
  1: {{runner: hosted, model: stub, base_url: "{upstream}", api_key_env: null}}
""")
        keys = keys_file(root)
        if args.baseline:
            base = baseline_server(args.baseline, root, profile, keys)
            servers.append(base)
            base.wait_ready()
            paths[f"baseline {args.baseline}"] = (f"{base.base_url}/v1/chat/completions", "tier:1")
        ours = ServerProcess("--profile", str(profile), "--keys", str(keys), log_path=root / "ours.log")
        servers.append(ours)
        ours.wait_ready()
        paths["ours"] = (f"{ours.base_url}/v1/chat/completions", "tier:1")

        if not args.skip_litellm:
            if not LITELLM.exists():
                sys.exit(f"{LITELLM} is missing: run `make litellm-setup`, or pass --skip-litellm")
            litellm = LiteLLMProxy(upstream, CLIENT_KEY, root)
            servers.append(litellm)
            litellm.wait_ready()
            paths["litellm"] = (f"{litellm.base_url}/v1/chat/completions", MODEL)
        return (asyncio.run(measure(paths, args.rate, args.requests, args.rounds)),
                asyncio.run(measure(paths, args.rate, args.requests, args.rounds, stream=True)))
    finally:
        for server in servers:
            server.stop()
        if args.baseline:
            remove_baseline(root)


def tier3_overhead(args, root: Path) -> list[Sample]:
    ours = ServerProcess("--profile", args.profile, "--keys", str(keys_file(root)), log_path=root / "tier3.log")
    try:
        ours.wait_ready()
        paths = {"tier3": (f"{ours.base_url}/v1/chat/completions", "tier:3")}
        return asyncio.run(measure(paths, args.rate, args.requests, args.rounds))["tier3"]
    finally:
        ours.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second, paced")
    parser.add_argument("--requests", type=int, default=300, help="per path per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--skip-tier3", action="store_true")
    parser.add_argument("--baseline", default=None, help="a git commit whose gateway runs beside this one (as ours)")
    parser.add_argument("--profile", default="cpu-tier3", help="profile whose Tier 3 part 2 measures")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gateway-overhead-"))

    results, streams = proxy_overhead(args, root)
    direct = [s.latency_ms for s in results["direct"]]
    print(f"# Gateway overhead: one-token completions paced at {args.rate:.0f} req/s, {args.rounds} rounds x "
          f"{args.requests} requests per path ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)")
    print()
    print("| path | requests | p50 ms | p99 ms | overhead p50 ms | overhead p99 ms | self-reported p50 ms | self-reported p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    overhead: dict[str, tuple[float, float]] = {}
    for name, samples in results.items():
        latency = [s.latency_ms for s in samples]
        reported = [s.self_reported_ms for s in samples if s.self_reported_ms is not None]
        if name == "direct":
            print(f"| {name} | {len(samples)} | {p50_p99(latency)} | - | - | - | - |")
            continue
        overhead[name] = (statistics.median(latency) - statistics.median(direct), pct(latency, 0.99) - pct(direct, 0.99))
        print(f"| {name} | {len(samples)} | {p50_p99(latency)} | {overhead[name][0]:.2f} | {overhead[name][1]:.2f} | "
              f"{p50_p99(reported)} |")
    if "litellm" in overhead:
        print()
        print(f"LiteLLM overhead / ours: p50 {overhead['litellm'][0] / overhead['ours'][0]:.1f}x, "
              f"p99 {overhead['litellm'][1] / overhead['ours'][1]:.1f}x")

    print()
    print(f"## Streams: time to the first byte of the answer, paced at {args.rate:.0f} req/s")
    print()
    print("| path | requests | TTFB p50 ms | TTFB p99 ms | added p50 ms | added p99 ms |")
    print("|---|---|---|---|---|---|")
    direct_ttfb = [s.latency_ms for s in streams["direct"]]
    for name, samples in streams.items():
        ttfb = [s.latency_ms for s in samples]
        added = "- | -" if name == "direct" else (f"{statistics.median(ttfb) - statistics.median(direct_ttfb):.2f} | "
                                                  f"{pct(ttfb, 0.99) - pct(direct_ttfb, 0.99):.2f}")
        print(f"| {name} | {len(samples)} | {p50_p99(ttfb)} | {added} |")

    if not args.skip_tier3:
        samples = tier3_overhead(args, root)
        print()
        print(f"## Tier 3 (llama.cpp in process, profile {args.profile}): {len(samples)} one-token completions "
              f"at {args.rate:.0f} req/s")
        print()
        print("| measure | p50 ms | p99 ms |")
        print("|---|---|---|")
        print(f"| client latency | {p50_p99([s.latency_ms for s in samples])} |")
        print(f"| runner (Server-Timing runner;dur) | {p50_p99([s.runner_ms for s in samples])} |")
        print(f"| gateway (Server-Timing gateway;dur) | {p50_p99([s.self_reported_ms for s in samples])} |")


if __name__ == "__main__":
    main()
