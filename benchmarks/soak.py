"""Soak: bounded concurrent load on 127.0.0.1 over several features, for a fixed time.

Reports throughput, latency percentiles, errors by type, the server's RSS over time (it must
plateau) and ledger rows against requests (they must be equal: every request that reached routing,
answered or refused, leaves exactly one final row).

Usage: python benchmarks/soak.py [--seconds 120] [--clients 8]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import ServerProcess  # noqa: E402

from tiers.ledger import schema  # noqa: E402

ROUTING = """features:
  ticket-triage: {tier: 3, value: retention, owner: support, failure_cost_usd: 1}
  faq: {tier: 3, value: internal, owner: support, failure_cost_usd: 0.1, cache: {}}
  sentiment: {tier: 3, value: internal, owner: marketing, failure_cost_usd: 0.1}
"""
PROMPTS = ["Where is my parcel?", "How do I reset my password?", "Cancel my subscription.",
           "My invoice is wrong.", "Can I change my delivery address?", "The app crashes on start."]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "routing.yaml").write_text(ROUTING)
        server = ServerProcess("--routing", str(root / "routing.yaml"), log_path=root / "server.log")
        server.wait_ready()
        results: list[tuple[str, float, str]] = []  # (kind, seconds, outcome)
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client(seed: int) -> None:
            rng = random.Random(seed)
            with httpx.Client(timeout=120) as http:
                while time.monotonic() < stop_at:
                    kind = rng.choices(["triage", "faq", "sentiment", "stream", "unknown"], [4, 3, 2, 2, 1])[0]
                    model = {"triage": "feature:ticket-triage", "faq": "feature:faq", "sentiment": "feature:sentiment",
                             "stream": "feature:ticket-triage", "unknown": "feature:no-such-feature"}[kind]
                    text = rng.choice(PROMPTS) if kind != "sentiment" else \
                        f"Answer positive or negative only. Review: {rng.choice(['great', 'awful', 'fine'])} product"
                    body = {"model": model, "messages": [{"role": "user", "content": text}],
                            "temperature": 0 if kind == "faq" else 0.7, "max_tokens": 24, "seed": rng.randint(0, 9)}
                    start = time.perf_counter()
                    try:
                        if kind == "stream":
                            with http.stream("POST", f"{server.base_url}/v1/chat/completions",
                                             json={**body, "stream": True}) as response:
                                for _ in response.iter_lines():
                                    pass
                                outcome = str(response.status_code)
                        else:
                            outcome = str(http.post(f"{server.base_url}/v1/chat/completions", json=body).status_code)
                    except httpx.HTTPError as exc:
                        outcome = exc.__class__.__name__
                    with lock:
                        results.append((kind, time.perf_counter() - start, outcome))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        memory: list[tuple[float, float]] = []
        began = time.monotonic()
        while any(t.is_alive() for t in threads):
            memory.append((time.monotonic() - began, rss_mb(server.proc.pid)))
            time.sleep(2)
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        httpx.get(f"{server.base_url}/v1/audit", timeout=60)  # flush the ledger
        engine = sa.create_engine(f"sqlite:///{server.data_dir / 'ledger.db'}")
        with engine.connect() as conn:
            final_rows = conn.execute(sa.select(sa.func.count()).select_from(schema.attempts)
                                      .where(schema.attempts.c.final.is_(True))).scalar()
        engine.dispose()
        server.stop()

    latencies = sorted(seconds for _, seconds, _ in results)
    outcomes = Counter(outcome for _, _, outcome in results)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    print(f"# soak: {args.clients} clients for {args.seconds:.0f} s, SmolLM2-135M Tier 3, 2 threads\n")
    print("| requests | req/s | p50 s | p95 s | p99 s | outcomes | ledger final rows |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(results)} | {len(results) / elapsed:.2f} | {statistics.median(latencies):.3f} | {pct(0.95):.3f} | "
          f"{pct(0.99):.3f} | {', '.join(f'{k}: {v}' for k, v in sorted(outcomes.items()))} | {final_rows} |")
    third = max(1, len(memory) // 3)
    early, late = max(m for _, m in memory[third:2 * third] or memory), max(m for _, m in memory[2 * third:] or memory)
    print("\nRSS MB over time: " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in memory[:: max(1, len(memory) // 12)]))
    print(f"RSS max middle third {early:.0f} MB, last third {late:.0f} MB: "
          f"{'plateau' if late <= early * 1.10 else 'GROWING'} ({(late / early - 1) * 100:+.1f}%)")
    print(f"ledger final rows {final_rows} vs requests {len(results)}: {'equal' if final_rows == len(results) else 'MISMATCH'}")


if __name__ == "__main__":
    main()
