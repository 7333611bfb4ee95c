"""Run a suite against a target through a gateway: concurrent with a bound, resumable, deterministic.

A target is a route on a gateway URL: `tier:<n>` (the tier directly) or `feature:<name>` (the real routing
policy, gates and cache). Results are keyed by (suite, example id, config hash) in the results store; a run
only does the examples the store does not hold for that key. The config hash covers the route, the runner
and model the gateway reports for the tier on /ready, the sampling settings and the suite's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Literal

import httpx
from pydantic import BaseModel, Field

from evals.store import OUTCOMES, Result, ResultStore
from evals.suite import Sample, Suite
from hardware.errors import ConfigError

RESULT_VERSION = 1
SEED = 0  # temperature 0 and a fixed seed: deterministic where the backend allows


@dataclass(frozen=True)
class Target:
    base_url: str
    route: str  # tier:<n> or feature:<name>
    tier: int
    runner: str
    model: str
    label: str

    def config(self, suite: Suite) -> dict:
        return {"route": self.route, "tier": self.tier, "runner": self.runner, "model": self.model,
                "temperature": 0, "seed": SEED, "suite": suite.name, "suite_fingerprint": suite.fingerprint()}

    def config_hash(self, suite: Suite) -> str:
        return hashlib.sha256(json.dumps(self.config(suite), sort_keys=True).encode()).hexdigest()[:16]


def resolve_target(base_url: str, route: str, tier: int | None = None, label: str | None = None) -> Target:
    """Ask the gateway which runner and model serve the route's tier (for the config hash and the report)."""
    base_url = base_url.rstrip("/")
    try:
        ready = httpx.get(f"{base_url}/ready", timeout=10).json()
        names = [m["id"] for m in httpx.get(f"{base_url}/v1/models", timeout=10).json().get("data", [])]
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot reach the gateway at {base_url} ({exc.__class__.__name__}); start it with "
                          f"`tier-runner serve` or pass --url") from None
    if route.startswith("tier:"):
        tier = int(route.removeprefix("tier:"))
    elif route not in names:
        raise ConfigError(f"{route} is not in the routing table of {base_url}; add the feature to the table "
                          f"(--routing) or use --via tier. Routable: {', '.join(names)}")
    elif tier is None:
        raise ConfigError(f"give the tier of {route} (the suite's `tier`)")
    status = ready.get("tiers", {}).get(str(tier), {})
    if status.get("state") != "ready":
        raise ConfigError(f"tier {tier} on {base_url} is {status.get('state', 'unknown')}: {status.get('detail', '')}")
    return Target(base_url, route, tier, status["runner"], status["model"], label or f"{status['model']} ({route})")


class RunSummary(BaseModel):
    """The typed record of one run (as inspect_ai's EvalLog): version, status, error, and what was done."""

    version: int = RESULT_VERSION
    status: Literal["success", "error", "cancelled"] = "success"
    error: str | None = None
    run_id: str
    suite: str
    target: str
    config_hash: str
    examples: int
    already_done: int
    ran: int
    outcomes: dict[str, int] = Field(default_factory=dict)
    started: float
    ended: float


def run_suite(suite: Suite, target: Target, store: ResultStore, *, concurrency: int = 2, limit: int | None = None,
              progress: bool = True) -> RunSummary:
    samples = suite.samples(limit)
    config_hash = target.config_hash(suite)
    store.record_config(config_hash, target.label, target.config(suite))
    done = store.done_ids(suite.name, config_hash)
    todo = [s for s in samples if s.id not in done]
    run_id = uuid.uuid4().hex[:12]
    started = time.time()
    summary = RunSummary(run_id=run_id, suite=suite.name, target=target.label, config_hash=config_hash,
                         examples=len(samples), already_done=len(samples) - len(todo), ran=0, started=started,
                         ended=started)
    counts = {k: 0 for k in OUTCOMES}
    scorer = suite.build_scorer()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"{suite.name} | {target.label}",
                   unit="ex", dynamic_ncols=True)
    try:
        with httpx.Client(base_url=target.base_url, timeout=suite.timeout_s) as client, \
                ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = [pool.submit(_one, client, suite, scorer, target, s, config_hash, run_id) for s in todo]
            for future in as_completed(futures):
                result = future.result()
                store.record_result(result)
                counts[result.outcome] += 1
                summary.ran += 1
                if bar:
                    bar.update(1)
    except KeyboardInterrupt:
        summary.status, summary.error = "cancelled", "interrupted; rerun to continue where it stopped"
        raise
    except Exception as exc:  # the store keeps what finished; the summary says why the rest did not
        summary.status, summary.error = "error", f"{exc.__class__.__name__}: {exc}"
    finally:
        if bar:
            bar.close()
        summary.outcomes = counts
        summary.ended = time.time()
    return summary


def _one(client: httpx.Client, suite: Suite, scorer, target: Target, sample: Sample, config_hash: str,
         run_id: str) -> Result:
    body = {"model": target.route, "messages": suite.messages(sample), "temperature": 0, "seed": SEED,
            "max_tokens": suite.max_tokens}
    if suite.json_response:
        body["response_format"] = {"type": "json_object"}
    result = Result(suite=suite.name, example_id=sample.id, config_hash=config_hash, outcome="error",
                    target=json.dumps(sample.target), model=target.model, tier=target.tier, run_id=run_id)
    started = time.perf_counter()
    try:
        response = client.post("/v1/chat/completions", json=body)
    except httpx.TimeoutException:
        result.outcome, result.error = "timeout", f"no answer within {suite.timeout_s:.0f}s"
        result.latency_ms = (time.perf_counter() - started) * 1000
        return result
    except httpx.HTTPError as exc:
        result.error = f"{exc.__class__.__name__}: {exc}"
        return result
    result.latency_ms = (time.perf_counter() - started) * 1000
    result.model = response.headers.get("x-model", target.model)
    result.cost_usd = float(response.headers.get("x-cost-usd") or 0)
    if response.status_code != 200:
        try:
            err = response.json().get("error", {})
        except ValueError:
            err = {}
        code = f"{err.get('type', '')} {err.get('code', '')}"
        result.outcome = "gate_failure" if "gate" in code else "error"
        result.error = f"HTTP {response.status_code} {code.strip()}: {str(err.get('message', response.text))[:300]}"
        return result
    data = response.json()
    usage = data.get("usage") or {}
    result.prompt_tokens = usage.get("prompt_tokens") or 0
    result.completion_tokens = usage.get("completion_tokens") or 0
    answer = data["choices"][0]["message"].get("content") or ""
    result.answer = answer
    gate = response.headers.get("x-gate")
    if gate and not gate.endswith(":ok"):
        result.outcome, result.error = "gate_failure", gate
        return result
    score = scorer.score(answer, sample.target)
    result.outcome = score.verdict
    result.parsed = json.dumps(score.parsed, default=str) if score.parsed is not None else None
    return result
