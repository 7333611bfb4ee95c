"""What a feature's gate would see, per example: the cheap tier's answer and its confidence signals.

Each example is asked of `tier:<n>` exactly as the feature sends it (its request block's system message,
max_tokens, temperature and response format, applied here as the gateway applies them), with log
probabilities, so the numbers are the ones `tiers/gates.py` computes in serving:
- `mean_logprob`: the mean token log-probability of the answer (the confidence gate's min_mean_logprob);
- `top1_margin`: the smallest gap between the two most likely tokens at any step (min_top1_margin);
  None when no step offers two candidates, which that gate lets pass;
- `agreement`: with k > 0, how many of k samples agree with their majority (the consistency gate's m),
  sampled as the gate samples them (the feature's temperature, or 0.7 when it is 0; seeds 0..k-1).
The feature's other gates (json_schema, choices, regex) are run on the answer too: an answer that fails
them escalates whatever its confidence. Each example is stored in the results store as soon as it is done,
so a rerun only asks what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from evals.harness import SEED, Target
from evals.store import ResultStore
from evals.suite import Sample, Suite
from runners.answer import Answer, Choice
from runners.request import Request
from tiers.gates import GateSpec, normalize, run_gates
from tiers.ledger.rows import spec_hash
from tiers.routing import Feature

SIGNAL_GATES = ("confidence", "consistency")
SAMPLING_TEMPERATURE = 0.7  # what tiers/policy.py samples a consistency gate at when the request says 0


@dataclass
class Signal:
    """One example: the greedy answer's score and confidence, and the k samples' majority."""

    example_id: str
    correct: bool
    gates_ok: bool  # the feature's non-signal gates pass on the greedy answer
    mean_logprob: float | None
    top1_margin: float | None
    agreement: int | None = None  # samples agreeing with the majority, of k
    samples: int = 0
    majority_correct: bool | None = None
    majority_gates_ok: bool | None = None
    answer: str = ""


def other_gates(feature: Feature):
    """The feature's gates other than confidence and consistency: they hold whatever threshold is chosen."""
    if feature.gate is None:
        return []
    kept = {k: v for k, v in feature.gate.model_dump(exclude_none=True).items() if k not in SIGNAL_GATES}
    return GateSpec(**kept).build() if kept else []


def request_body(feature: Feature, suite: Suite, sample: Sample, tier: int) -> dict:
    """The chat body the feature would send for this example, asked directly of the tier, with logprobs."""
    d = feature.request
    messages = suite.messages(sample)
    if d is not None and d.system is not None:
        kept = [m for m in messages if not ("system" in d.locked and m["role"] in ("system", "developer"))]
        messages = [{"role": "system", "content": d.system}, *kept]
    body = {"model": f"tier:{tier}", "messages": messages, "seed": SEED, "logprobs": True, "top_logprobs": 2,
            "temperature": d.temperature if d is not None and d.temperature is not None else 0,
            "max_tokens": min(suite.max_tokens, d.max_tokens) if d is not None and d.max_tokens else suite.max_tokens}
    if d is not None and d.response_format is not None:
        fmt = d.response_format
        body["response_format"] = {"type": fmt.type} if fmt.type != "json_schema" else {
            "type": "json_schema", "json_schema": {"name": fmt.name or "output", "schema": fmt.schema_ or {}}}
    return body


def token_signals(tokens: list[dict]) -> tuple[float | None, float | None]:
    """(mean logprob, smallest top-1 margin) of an answer's tokens, as the confidence gate computes them."""
    if not tokens:
        return None, None
    mean = sum(t["logprob"] for t in tokens) / len(tokens)
    margins = [t["top_logprobs"][0]["logprob"] - t["top_logprobs"][1]["logprob"]
               for t in tokens if len(t.get("top_logprobs") or []) > 1]
    return mean, (min(margins) if margins else None)


def config_hash(target: Target, suite: Suite, feature: Feature) -> str:
    """What the signals depend on: the target, the suite, the feature's request block and its other gates (not
    the signal gate's threshold, so a table edited by calibrate keeps its measurements)."""
    asked = {"request": feature.request.model_dump(mode="json") if feature.request else None,
             "gates": [[g.name, g.args] for g in other_gates(feature)]}
    config = {**target.config(suite), "calibrate": spec_hash(asked)}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def collect(target: Target, suite: Suite, feature_name: str, feature: Feature, samples: list[Sample],
            store: ResultStore, *, k: int = 0, concurrency: int = 2, timeout_s: float = 120) -> tuple[list[Signal], int]:
    """Signals of every sample (stored ones reused when they have the same k, or any when k is 0); returns them
    and how many ended in an error (not stored)."""
    digest = config_hash(target, suite, feature)
    store.record_config(digest, f"calibrate {feature_name} on {target.label}", {
        **target.config(suite), "calibrate": feature_name})
    known = {s["example_id"]: s for s in store.signals(suite.name, digest) if not k or s["samples"] == k}
    todo = [s for s in samples if s.id not in known]
    scorer, gates = suite.build_scorer(), other_gates(feature)
    errors = 0
    with httpx.Client(base_url=target.base_url, timeout=timeout_s) as client, \
            ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for sample, signal in zip(todo, pool.map(lambda s: _one(client, target, suite, feature, s, scorer, gates, k),
                                                  todo)):
            if signal is None:
                errors += 1
                continue
            row = signal.__dict__
            store.record_signal(suite.name, digest, row)
            known[sample.id] = row
    wanted = [known[s.id] for s in samples if s.id in known]
    return [Signal(**row) for row in wanted], errors


def _one(client: httpx.Client, target: Target, suite: Suite, feature: Feature, sample: Sample, scorer, gates,
         k: int) -> Signal | None:
    body = request_body(feature, suite, sample, target.tier)
    data = _ask(client, body)
    if data is None:
        return None
    choice = data["choices"][0]
    text = choice["message"].get("content") or ""
    mean, margin = token_signals((choice.get("logprobs") or {}).get("content") or [])
    signal = Signal(sample.id, scorer.score(text, sample.target).verdict == "correct", _passes(gates, text),
                    mean, margin, answer=text)
    if k:
        temperature = body["temperature"] or SAMPLING_TEMPERATURE
        texts = []
        for i in range(k):
            sampled = _ask(client, {**body, "temperature": temperature, "seed": SEED + i, "logprobs": False,
                                    "top_logprobs": None})
            if sampled is None:
                return None
            texts.append(sampled["choices"][0]["message"].get("content") or "")
        keys = [normalize(t) for t in texts]
        majority, count = Counter(keys).most_common(1)[0]
        chosen = texts[keys.index(majority)]
        signal.agreement, signal.samples = count, k
        signal.majority_correct = scorer.score(chosen, sample.target).verdict == "correct"
        signal.majority_gates_ok = _passes(gates, chosen)
    return signal


def _ask(client: httpx.Client, body: dict) -> dict | None:
    body = {key: value for key, value in body.items() if value is not None}
    try:
        response = client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _passes(gates, text: str) -> bool:
    if not gates:
        return True
    answer = Answer(model="calibrate", choices=[Choice(text=text)])
    return run_gates(gates, Request(messages=[]), [answer]).passed
