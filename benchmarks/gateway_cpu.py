"""CPU per request of one gateway process, and of the Redis and PostgreSQL behind it: the figures docs/scaling.md
sizes replicas, Redis and PostgreSQL from.

The gateway serves `tier:1`, the hosted runner pointed at benchmarks/openai_stub.py (answers at once), so
what is measured is the gateway's own work: client key and rate limit, spend cap reservation, routing, the
upstream call, ledger row, metrics, headers and log line. Requests come from `--clients` closed-loop
clients; the CPU seconds (user + system, from /proc) each process used during the run, divided by the
requests answered, is its CPU per request. Two setups, one after the other:
  local    SQLite ledger, limits in the gateway (one replica)
  shared   PostgreSQL ledger and --redis-url: limits and spend reserved in Redis (any number of replicas)
Client, gateway, upstream and stores share this machine's cores, so req/s here is a floor, not a capacity.
Usage: python benchmarks/gateway_cpu.py [--requests 3000] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.harness import start_stub, stub_profile  # noqa: E402
from tests.conftest import RedisServer, ServerProcess, free_port  # noqa: E402
from tests.postgres import PostgresServer  # noqa: E402
from tiers.auth import hash_key  # noqa: E402

KEY = "sk-cpu-bench-client-key-0001"
BODY = {"model": "tier:1", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 1, "temperature": 0}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def children(parent: int) -> list[int]:
    """A process and its children (PostgreSQL's postmaster and its backends)."""
    found = [parent]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return found


async def load(url: str, requests: int, clients: int) -> tuple[int, float]:
    done, errors = 0, 0
    async with httpx.AsyncClient(timeout=30, headers={"authorization": f"Bearer {KEY}"},
                                 limits=httpx.Limits(max_connections=clients)) as client:
        async def worker() -> None:
            nonlocal done, errors
            while done + errors < requests:
                response = await client.post(url, json=BODY)
                if response.status_code == 200:
                    done += 1
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done, time.perf_counter() - started


def run(name: str, args, root: Path, upstream: str, extra: list[str], stores: dict[str, callable]) -> dict:
    profile = stub_profile(root / "cpu.yaml", upstream)
    keys = root / "keys.yaml"  # a rate limit and a spend cap, so both are checked on every request
    keys.write_text(f"keys: [{{id: bench, sha256: {hash_key(KEY)}, direct_tiers: true, rate_limit: "
                    f"{{requests_per_minute: 10000000}}, spend_cap: {{usd: 1000000}}}}]\n")
    gateway = ServerProcess("--profile", str(profile), "--keys", str(keys), "--log-level", "warning", *extra,
                            log_path=root / f"{name}.log")
    try:
        gateway.wait_ready()
        url = f"{gateway.base_url}/v1/chat/completions"
        asyncio.run(load(url, 200, args.clients))  # warm-up: connections, first-request imports
        pids = {"gateway": lambda: [gateway.proc.pid], **stores}
        before = {k: cpu_s(f()) for k, f in pids.items()}
        done, seconds = asyncio.run(load(url, args.requests, args.clients))
        time.sleep(1.0)  # the ledger writer's last batch
        used = {k: cpu_s(f()) - before[k] for k, f in pids.items()}
        return {"setup": name, "requests": done, "req_s": done / seconds,
                **{f"{k}_ms": used[k] * 1000 / done for k in pids}}
    finally:
        gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stub = start_stub(root)
        redis = RedisServer(root).start()
        postgres = PostgresServer(free_port()).start()
        try:
            upstream = f"{stub.base_url}/v1"
            results.append(run("local", args, root, upstream, [], {}))
            postmaster = int((postgres.data / "postmaster.pid").read_text().split()[0])
            results.append(run("shared", args, root, upstream, ["--ledger-url", postgres.url, "--redis-url", redis.url],
                               {"redis": lambda: [redis.proc.pid], "postgres": lambda: children(postmaster)}))
        finally:
            postgres.stop()
            redis.stop()
            stub.stop()
    print(f"\n{args.requests} one-token chat completions through `tier:1` by {args.clients} clients "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)\n")
    print("| setup | requests | req/s (shared cores) | gateway CPU ms/request | Redis CPU ms/request | "
          "PostgreSQL CPU ms/request |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['setup']} | {r['requests']} | {r['req_s']:.0f} | {r['gateway_ms']:.2f} | "
              f"{r.get('redis_ms', 0):.3f} | {r.get('postgres_ms', 0):.3f} |")


if __name__ == "__main__":
    main()
