"""The gateway at saturation: a closed loop of one-token chat completions, ours vs LiteLLM vs the upstream direct.

Every path fronts the same fixed-answer upstream (benchmarks/openai_stub.py):
  direct    the upstream itself
  floor     a bare ASGI app on uvicorn forwarding with aiohttp (benchmarks/floor_proxy.py): what the HTTP server
            and the upstream client alone cost, the part of ours no change to our code can remove
  ours      `model: tier:1` through the hosted runner, with a client key (rate limit and spend cap checked and
            reserved), routing, the ledger row (spool + SQLite), metrics, headers and the request log line
  ours x2   the same with `--workers 2` (two gateway processes on one port) and the Redis that workers need for
            the key's limits; its CPU counts both workers, their parent and Redis
  baseline  the same as ours, served by the code of another git commit (--baseline REF, a worktree of it), to see a
            change's effect in the same run
  litellm   LiteLLM's proxy (`make litellm-setup`) with a master key, no database
Requests come from benchmarks/loadgen.py, its own process: --clients connections, each sending the next
request as soon as its answer is in, for --seconds, two rounds with the paths alternated. Server CPU per
request = the user + system CPU seconds the server's processes used during the run (from /proc), divided
by the requests answered. Generator, upstream and server share this machine's cores, so req/s is a floor.
With --stream every request asks for `"stream": true` and each answer is read to its last chunk.
Then, below saturation: the same --clients share a paced rate (--paced, a fraction of ours' closed-loop
req/s), first whole answers and then streams, on every path that answered well above that rate in the
closed loop. That gives p99 latency when the server keeps up, and a stream's time to first byte (its first
chunk) against direct's: what the gateway adds before a client sees anything.
Usage: python benchmarks/gateway_saturation.py [--clients 16] [--seconds 10] [--rounds 2] [--baseline REF]
       [--skip-litellm] [--workers 2] [--stream] [--paced 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.gateway_cpu import children, cpu_s  # noqa: E402
from benchmarks.harness import start_stub, stub_profile  # noqa: E402
from tests.conftest import ChildProcess, RedisServer, ServerProcess, free_port  # noqa: E402
from tests.litellm_proxy import LITELLM, MODEL, LiteLLMProxy  # noqa: E402
from tiers.auth import hash_key  # noqa: E402

KEY = "sk-saturation-bench-client-key-0001"
PROMPT = [{"role": "user", "content": "Say yes."}]


@dataclass
class Target:
    name: str
    url: str
    model: str
    pid: int | None  # the server whose CPU is read (with its children); None for the upstream alone
    also: tuple[int, ...] = ()  # more processes whose CPU counts (the Redis of the workers)


def keys_file(root: Path) -> Path:
    keys = root / "keys.yaml"
    keys.write_text(f"keys: [{{id: bench, sha256: {hash_key(KEY)}, direct_tiers: true, rate_limit: "
                    f"{{requests_per_minute: 100000000}}, spend_cap: {{usd: 1000000}}}}]\n")
    return keys


def baseline_server(ref: str, root: Path, profile: Path, keys: Path) -> ChildProcess:
    tree = root / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--quiet", str(tree), ref], check=True)
    port = free_port()
    return ChildProcess([sys.executable, "-m", "tiers", "serve", "--port", str(port), "--profile", str(profile),
                         "--keys", str(keys), "--data-dir", str(root / "baseline-data")], port=port,
                        log_path=root / "baseline.log", cwd=tree, env={"PYTHONPATH": str(tree)})


def remove_baseline(root: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(root / "baseline")], check=False)


def closed_loop(path: Target, clients: int, seconds: float, stream: bool = False, rate: float | None = None) -> dict:
    """One run of the load generator on `path`: closed loop, or paced at `rate` requests a second in all."""
    body = json.dumps({"model": path.model, "messages": PROMPT, "max_tokens": 1, "temperature": 0,
                       **({"stream": True} if stream else {})})
    pids = (lambda: children(path.pid) + list(path.also)) if path.pid else (lambda: [])
    before = cpu_s(pids())
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loadgen.py"), path.url, "--body", body,
                          "--header", f"Authorization: Bearer {KEY}", "--clients", str(clients),
                          "--seconds", str(seconds), *(["--rate", str(rate)] if rate else [])],
                         capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    result["cpu_ms"] = (cpu_s(pids()) - before) * 1000 / max(1, result["requests"]) if path.pid else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", default=None, help="a git commit whose gateway runs beside this one")
    parser.add_argument("--skip-litellm", action="store_true")
    parser.add_argument("--stream", action="store_true", help="streamed answers (SSE), each read to its end")
    parser.add_argument("--workers", type=int, default=2, help="the `ours xN` path's --workers; 1 leaves it out")
    parser.add_argument("--paced", type=float, default=0.5, metavar="FRACTION",
                        help="then pace every path that keeps up at this fraction of ours' closed-loop req/s, whole "
                             "answers and streams (0 leaves it out)")
    args = parser.parse_args()
    servers: list[ChildProcess] = []
    results: dict[str, list[dict]] = {}
    paced: dict[tuple[str, bool], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            stub = start_stub(root)
            servers.append(stub)
            upstream = f"{stub.base_url}/v1"
            profile, keys = stub_profile(root / "saturation.yaml", upstream), keys_file(root)
            ours = ServerProcess("--profile", str(profile), "--keys", str(keys), log_path=root / "ours.log")
            servers.append(ours)
            paths = [Target("direct", f"{upstream}/chat/completions", "stub", None)]
            port = free_port()
            floor = ChildProcess([sys.executable, str(ROOT / "benchmarks" / "floor_proxy.py"), str(port), upstream],
                                 port=port, log_path=root / "floor.log")
            servers.append(floor)
            paths.append(Target("floor (uvicorn + aiohttp)", f"{floor.base_url}/v1/chat/completions", "stub",
                                floor.proc.pid))
            if args.baseline:
                base = baseline_server(args.baseline, root, profile, keys)
                servers.append(base)
                paths.append(Target(f"baseline {args.baseline}", f"{base.base_url}/v1/chat/completions", "tier:1",
                                   base.proc.pid))
            paths.append(Target("ours", f"{ours.base_url}/v1/chat/completions", "tier:1", ours.proc.pid))
            if args.workers > 1:
                redis = RedisServer(root)
                servers.append(redis.start())
                multi = ServerProcess("--profile", str(profile), "--keys", str(keys), "--workers", str(args.workers),
                                      "--redis-url", redis.url, log_path=root / "workers.log")
                servers.append(multi)
                paths.append(Target(f"ours x{args.workers}", f"{multi.base_url}/v1/chat/completions", "tier:1",
                                    multi.proc.pid, (redis.proc.pid,)))
            if not args.skip_litellm:
                if not LITELLM.exists():
                    sys.exit(f"{LITELLM} is missing: run `make litellm-setup`, or pass --skip-litellm")
                litellm = LiteLLMProxy(upstream, KEY, root)
                servers.append(litellm)
                paths.append(Target("litellm", f"{litellm.base_url}/v1/chat/completions", MODEL, litellm.proc.pid))
            for server in servers:
                if isinstance(server, ChildProcess):  # (Redis is ready once started)
                    server.wait_ready()
            for path in paths:  # warm-up: connections, first-request imports
                closed_loop(path, args.clients, 2, args.stream)
            for round_ in range(args.rounds):
                for path in paths if round_ % 2 == 0 else reversed(paths):
                    results.setdefault(path.name, []).append(closed_loop(path, args.clients, args.seconds, args.stream))
            if args.paced:
                rate = paced_rate(results, args.paced)
                keeping_up = [p for p in paths if statistics.median(r["rps"] for r in results[p.name]) > rate * 1.2]
                for stream in (False, True):
                    for round_ in range(args.rounds):
                        for path in keeping_up if round_ % 2 == 0 else reversed(keeping_up):
                            paced.setdefault((path.name, stream), []).append(
                                closed_loop(path, args.clients, args.seconds, stream, rate))
        finally:
            for server in servers:
                server.stop()
            if args.baseline:
                remove_baseline(root)
    report(results, args)
    if paced:
        report_paced(paced, paced_rate(results, args.paced), args)


def report(results: dict[str, list[dict]], args) -> None:
    print(f"\nclosed loop, {args.clients} clients, one-token chat completions{' streamed' if args.stream else ''}, "
          f"{args.rounds} rounds of "
          f"{args.seconds:g} s per path, alternated ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs); medians of the rounds\n")
    print("| path | req/s | p50 ms | p99 ms | errors | server CPU ms/request | req/s vs litellm |")
    print("|---|---|---|---|---|---|---|")
    litellm = statistics.median(r["rps"] for r in results["litellm"]) if "litellm" in results else None
    for name, rounds in results.items():
        rps = statistics.median(r["rps"] for r in rounds)
        cpu = [r["cpu_ms"] for r in rounds if r["cpu_ms"] is not None]
        print(f"| {name} | {rps:,.0f} | {statistics.median(r['p50_ms'] for r in rounds):.1f} | "
              f"{statistics.median(r['p99_ms'] for r in rounds):.1f} | {sum(r['errors'] for r in rounds)} | "
              f"{f'{statistics.median(cpu):.2f}' if cpu else '-'} | {f'{rps / litellm:.1f}x' if litellm else '-'} |")


def paced_rate(results: dict[str, list[dict]], fraction: float) -> float:
    """Below saturation: a fraction of what ours answered in the closed loop, rounded down to 10 req/s."""
    return max(10.0, fraction * statistics.median(r["rps"] for r in results["ours"]) // 10 * 10)


def report_paced(paced: dict[tuple[str, bool], list[dict]], rate: float, args) -> None:
    print(f"\n{args.clients} clients paced at {rate:,.0f} req/s in all (below ours' saturation), {args.rounds} rounds of "
          f"{args.seconds:g} s per path, alternated; latency counts from when each request was due; added = the "
          "path's median minus direct's; medians of the rounds\n")
    print("| path | whole: p50 ms | p99 ms | added p50 ms | stream TTFB p50 ms | TTFB p99 ms | added TTFB p50 ms |")
    print("|---|---|---|---|---|---|---|")

    def median(name: str, stream: bool, key: str) -> float:
        return statistics.median(r[key] for r in paced[(name, stream)])

    for name in dict.fromkeys(name for name, _ in paced):
        added = "-" if name == "direct" else f"{median(name, False, 'p50_ms') - median('direct', False, 'p50_ms'):.2f}"
        added_ttfb = ("-" if name == "direct" else
                      f"{median(name, True, 'ttfb_p50_ms') - median('direct', True, 'ttfb_p50_ms'):.2f}")
        print(f"| {name} | {median(name, False, 'p50_ms'):.2f} | {median(name, False, 'p99_ms'):.2f} | {added} | "
              f"{median(name, True, 'ttfb_p50_ms'):.2f} | {median(name, True, 'ttfb_p99_ms'):.2f} | {added_ttfb} |")


if __name__ == "__main__":
    main()
