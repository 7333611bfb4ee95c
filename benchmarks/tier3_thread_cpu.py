"""Where a Tier 3 token's CPU goes, thread by thread: our endpoint vs native llama-server, one client.

On a 2-core machine llama.cpp's two compute threads take both cores, so whatever else a server does per token
(our event loop: the wake-up, the delta, the chunk, the socket write) is CPU taken from decoding. This reads
each thread's user and system CPU from /proc/<pid>/task before and after a run of sequential streamed requests
and divides by the tokens answered. Both servers get the same GGUF, threads, slots (--slots, default 4) and one
unified KV cache; rounds alternate the servers, and the median round of each figure is reported.
Usage: python benchmarks/tier3_thread_cpu.py [--requests 16] [--rounds 3] [--slots 4] [--no-repack]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.native_llama_server import binary as native_binary  # noqa: E402
from runners.llama.layout import repacks  # noqa: E402
from benchmarks.tier3_throughput import PROMPTS, one_request, slots_profile  # noqa: E402
from hardware.catalog import load_catalog, resolve_model_file  # noqa: E402
from hardware.profile import load_profile  # noqa: E402
from tests.conftest import ChildProcess, ServerProcess, free_port  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[str, tuple[float, float]]:
    """(user s, system s) of each live thread, keyed by `tid name`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[f"{tid} {name}"] = (int(fields[11]) / TICK, int(fields[12]) / TICK)
    return out


async def sequential(url: str, model: str, requests: int) -> int:
    tokens = 0
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        for i in range(requests):
            tokens += (await one_request(client, url, model, PROMPTS[i % len(PROMPTS)], 64)).tokens
    return tokens


def measure(process: ChildProcess, model: str, requests: int) -> dict:
    url = f"{process.base_url}/v1/chat/completions"
    asyncio.run(sequential(url, model, 2))  # warm-up
    before, start = thread_cpu(process.proc.pid), time.perf_counter()
    tokens = asyncio.run(sequential(url, model, requests))
    wall, after = time.perf_counter() - start, thread_cpu(process.proc.pid)
    used = {k: (u - before.get(k, (0, 0))[0], s - before.get(k, (0, 0))[1]) for k, (u, s) in after.items()}
    ranked = sorted(used.values(), key=lambda us: -sum(us))
    per_token = [(1000 * u / tokens, 1000 * s / tokens) for u, s in ranked]
    return {"tok_s": tokens / wall, "threads": per_token,
            "total": sum(u + s for u, s in per_token)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--no-repack", dest="repack", action="store_const", const=False, default=None,
                        help="weights in the GGUF's own layout for both (as tier3_throughput.py --no-repack)")
    args = parser.parse_args()
    args.repack = repacks(args.repack)  # by default as Tier 3 decides (not on AMX), and native follows
    if not native_binary().is_file():
        raise SystemExit(f"{native_binary()} does not exist: run `make bench-native`")
    profile_file, profile = load_profile("cpu-tier3")
    model_path = resolve_model_file(profile.tiers[3].model, load_catalog())
    threads = len(os.sched_getaffinity(0))
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))
    ours = ServerProcess("--profile", str(slots_profile(profile_file, args.slots, True, args.repack, log_dir)),
                         log_path=log_dir / "tier3-thread-cpu-ours.log")
    port = free_port()
    native = ChildProcess([str(native_binary()), "-m", str(model_path), "-t", str(threads), "-tb", str(threads),
                           "-c", str(2048 * args.slots), "--parallel", str(args.slots), "--cont-batching",
                           "--kv-unified", "--port", str(port), "--alias", "smollm2",
                           *([] if args.repack else ["--no-repack"])],
                          port=port, log_path=log_dir / "tier3-thread-cpu-native.log", ready_path="/health")
    servers = {"ours": (ours, "tier:3"), "native llama-server": (native, "smollm2")}
    rows: dict[str, list[dict]] = {name: [] for name in servers}
    try:
        ours.wait_ready()
        native.wait_ready()
        for r in range(args.rounds):
            for name in (list(servers) if r % 2 == 0 else list(reversed(servers))):
                process, model = servers[name]
                rows[name].append(row := measure(process, model, args.requests))
                print(f"  round {r + 1} {name}: {row['tok_s']:.1f} tok/s", file=sys.stderr, flush=True)
    finally:
        ours.stop()
        native.stop()
    print(f"# CPU per token by thread, 1 client, {args.requests} sequential streamed requests of 64 tokens, "
          f"{args.slots} slots, {threads} threads, median of {args.rounds} alternated rounds\n")
    print("| server | tok/s | CPU ms/token, all threads | top thread user/sys | 2nd | 3rd | 4th |")
    print("|---|---|---|---|---|---|---|")
    for name, runs in rows.items():
        top = [[statistics.median(run["threads"][i][k] for run in runs if len(run["threads"]) > i) for k in (0, 1)]
               for i in range(4)]
        print(f"| {name} | {statistics.median(r['tok_s'] for r in runs):.1f} | "
              f"{statistics.median(r['total'] for r in runs):.2f} | "
              + " | ".join(f"{u:.2f} / {s:.2f}" for u, s in top) + " |")


if __name__ == "__main__":
    main()
