"""Tier 3 throughput under concurrency: our endpoint vs native llama-server vs llama-cpp-python's server.

All servers are up at once but only one is sent requests at a time: each level runs on each server in
turn, for several rounds, and the median round is reported; the ratios are the median of each round's own
ours / other (the two ran back to back). Same GGUF file, thread count and context size;
ours and native llama-server also get the same number of slots (--slots, default the highest level) and
the same KV layout (one unified cache, or one per slot with --no-kv-unified). Native llama-server is the
one `make bench-native` builds (benchmarks/native_llama_server.py); it is found without a flag.
Workload per level: C concurrent streaming clients, each sending requests back to back until the level
has sent max(2*C, 8) requests; fixed prompts, max_tokens 64, temperature 0, seed 7.
aggregate tok/s = completion tokens of the level / wall time of the level. TTFT = first content chunk.
The gateway's own overhead per request is measured by benchmarks/gateway_overhead.py.
Both get the same weight layout: repacked for the CPU's extra kernels where Tier 3 repacks by default (not on a
CPU with AMX, runners/llama/layout.py), and with --no-repack the GGUF's own layout for both.
Usage: python benchmarks/tier3_throughput.py [--levels 1,4,8,16] [--rounds 3] [--slots N] [--no-kv-unified]
       [--no-repack]
       [--llama-server PATH | --skip-native] [--skip-llama-cpp-python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import pct  # noqa: E402
from tests.conftest import ChildProcess, ServerProcess, free_port  # noqa: E402  (the tests' subprocess helpers)
from native_llama_server import binary as native_binary  # noqa: E402

from hardware.catalog import load_catalog, resolve_model_file  # noqa: E402
from hardware.profile import load_profile  # noqa: E402
from runners.llama.layout import repacks  # noqa: E402

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how rain forms, in detail.",
    "Describe a busy market in a big city.",
    "Tell me about the history of bicycles.",
    "Write a letter to a friend about your holiday by the sea.",
    "Describe how to bake bread at home, step by step.",
    "Explain why the sky is blue to a child.",
    "Write a story about a robot who learns to paint.",
]


@dataclass
class Result:
    tokens: int
    latency: float
    ttft: float


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> Result:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "seed": 7, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    ttft = None
    chunks = 0
    usage = None
    async with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    chunks += 1
                    if ttft is None:
                        ttft = time.perf_counter() - start
    latency = time.perf_counter() - start
    tokens = usage["completion_tokens"] if usage else chunks  # llama-cpp-python's server sends one chunk per token
    return Result(tokens, latency, ttft if ttft is not None else latency)


async def level(base_url: str, model: str, clients: int, max_tokens: int) -> dict:
    url = f"{base_url}/v1/chat/completions"
    total = max(2 * clients, 8)
    counter = iter(range(total))
    results: list[Result] = []

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            results.append(await one_request(client, url, model, PROMPTS[i % len(PROMPTS)], max_tokens))

    # A new connection per request, for every server: native llama-server (b0.5.0 in llama-cpp-python 0.3.36's
    # sdist) drops a kept-alive connection that httpx reuses ("Server disconnected without sending a response").
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        for prompt in PROMPTS[:2]:  # warm-up: caches, first graphs, connections
            await one_request(client, url, model, prompt, max_tokens)
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    latencies = [r.latency for r in results]
    return {
        "clients": clients, "requests": len(results), "tok_s": sum(r.tokens for r in results) / wall,
        "p50": statistics.median(latencies), "p95": pct(latencies, 0.95),
        "ttft50": statistics.median(r.ttft for r in results), "tokens": sum(r.tokens for r in results),
    }


def slots_profile(profile_path: Path, slots: int, kv_unified: bool, repack: bool, log_dir: Path) -> Path:
    """The profile with Tier 3 given the benchmark's slot count, KV layout and weight layout (what native gets too)."""
    import yaml

    data = yaml.safe_load(profile_path.read_text())
    data["tiers"] = {3: {**data["tiers"][3], "max_batch": slots, "kv_unified": kv_unified, "repack": repack}}
    path = log_dir / "tier3-throughput-profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@dataclass
class Server:
    name: str
    model: str  # the model name its API expects
    process: ChildProcess


def interleaved(servers: list[Server], levels: list[int], max_tokens: int, rounds: int) -> dict[tuple[str, int], list[dict]]:
    """Every level on every server in turn, `rounds` times (the order rotating), so that a slow minute of a
    shared machine lands on all servers alike: each server's rows per level, one per round."""
    runs: dict[tuple[str, int], list[dict]] = {}
    for r in range(rounds):
        for clients in levels:
            for k in range(len(servers)):
                server = servers[(k + r) % len(servers)]
                row = asyncio.run(level(server.process.base_url, server.model, clients, max_tokens))
                print(f"  round {r + 1} {server.name}: {clients:>2} clients  {row['tok_s']:6.1f} tok/s  "
                      f"p50 {row['p50']:.2f}s  ttft p50 {row['ttft50']:.3f}s", file=sys.stderr, flush=True)
                runs.setdefault((server.name, clients), []).append(row)
    return runs


def medians(runs: dict[tuple[str, int], list[dict]], servers: list[Server], levels: list[int]) -> dict[str, list[dict]]:
    keys = ("tok_s", "p50", "p95", "ttft50")
    return {s.name: [{"clients": c, "requests": runs[s.name, c][0]["requests"],
                      **{k: statistics.median(row[k] for row in runs[s.name, c]) for k in keys}} for c in levels]
            for s in servers}


def paired_ratio(runs: dict[tuple[str, int], list[dict]], other: str, clients: int, key: str) -> float:
    """The median over rounds of ours / other within each round: the two ran back to back, so a slow minute
    of the machine weighs on both, which a ratio of the two medians (rounds apart) does not ensure."""
    return statistics.median(a[key] / b[key] for a, b in zip(runs["ours", clients], runs[other, clients]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,4,8,16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="each level this many times per server, interleaved")
    parser.add_argument("--slots", type=int, help="slots for ours and native llama-server (default: highest level)")
    parser.add_argument("--no-kv-unified", dest="kv_unified", action="store_false",
                        help="one KV cache per slot instead of one shared by all, for both")
    parser.add_argument("--no-repack", dest="repack", action="store_const", const=False, default=None,
                        help="weights in the GGUF's own layout for both, not repacked for AMX or AVX at load (native "
                             "llama-server's AMX kernels crash on some VMs)")
    parser.add_argument("--llama-server", type=Path, default=native_binary(),
                        help="native llama-server binary (default: the one `make bench-native` builds)")
    parser.add_argument("--skip-native", action="store_true")
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
    parser.add_argument("--profile", default="cpu-tier3", help="profile for our endpoint (name or YAML path)")
    args = parser.parse_args()
    args.repack = repacks(args.repack)  # by default as Tier 3 decides (not on AMX), and native follows
    levels = [int(x) for x in args.levels.split(",")]

    profile_file, profile = load_profile(args.profile)
    placement = profile.tiers[3]
    slots = args.slots or max(levels)
    threads = len(os.sched_getaffinity(0)) if placement.options.get("threads", "auto") == "auto" else placement.options["threads"]
    n_ctx = placement.options.get("n_ctx", 2048)
    model_path = resolve_model_file(placement.model, load_catalog())
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    if not args.skip_native and not args.llama_server.is_file():
        raise SystemExit(f"{args.llama_server} does not exist: run `make bench-native` (or pass --skip-native)")

    ours = ServerProcess("--profile", str(slots_profile(profile_file, slots, args.kv_unified, args.repack, log_dir)),
                         log_path=log_dir / "tier3-throughput-ours.log")
    servers = [Server("ours", "tier:3", ours)]
    if not args.skip_native:
        port = free_port()
        cmd = [str(args.llama_server), "-m", str(model_path), "-t", str(threads), "-tb", str(threads),
               "-c", str(n_ctx * slots), "--parallel", str(slots), "--cont-batching", "--port", str(port),
               "--alias", "smollm2", "--kv-unified" if args.kv_unified else "--no-kv-unified",
               *([] if args.repack else ["--no-repack"])]
        servers.append(Server("native llama-server", "smollm2", ChildProcess(
            cmd, port=port, log_path=log_dir / "tier3-throughput-llama-server.log", ready_path="/health")))
    if not args.skip_llama_cpp_python:
        port = free_port()
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", "smollm2",
               "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(n_ctx),
               "--port", str(port), "--verbose", "False",
               "--interrupt_requests", "False"]  # by default a new request cuts the running stream
        servers.append(Server("llama-cpp-python server", "smollm2", ChildProcess(
            cmd, port=port, log_path=log_dir / "tier3-throughput-llama-cpp-python.log", ready_path="/v1/models")))
    try:
        for server in servers:
            server.process.wait_ready()
        runs = interleaved(servers, levels, args.max_tokens, args.rounds)
        results = medians(runs, servers, levels)
    finally:
        for server in servers:
            server.process.stop()

    layout = ("one unified KV cache" if args.kv_unified else "one KV cache per slot") + (
        "" if args.repack else ", weights not repacked")
    print(f"# Tier 3 throughput: {placement.model}, {threads} threads, n_ctx {n_ctx} per slot, {slots} slots "
          f"({layout}) for ours and native, max_tokens={args.max_tokens}, temperature 0, streaming, median of "
          f"{args.rounds} interleaved rounds ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs); "
          f"ratios: the median of the rounds' own ratios")
    print()
    others = [name for name in results if name != "ours"]
    print("| server | clients | requests | aggregate tok/s | p50 latency s | p95 latency s | p50 TTFT s |"
          + "".join(f" ours / {o} tok/s | TTFT ours / {o} |" for o in others))
    print("|---|---|---|---|---|---|---|" + "---|---|" * len(others))
    for name, rows in results.items():
        for row in rows:
            ratios = "".join(f" {paired_ratio(runs, o, row['clients'], 'tok_s'):.2f} | "
                             f"{paired_ratio(runs, o, row['clients'], 'ttft50'):.2f} |" if name == "ours" else " | |"
                             for o in others)
            print(f"| {name} | {row['clients']} | {row['requests']} | {row['tok_s']:.1f} | {row['p50']:.2f} | "
                  f"{row['p95']:.2f} | {row['ttft50']:.3f} |{ratios}")


if __name__ == "__main__":
    main()
