"""`tier-runner calibrate` with the real model on a shipped suite: the threshold it writes, applied by a real gateway's
gate to the held-out half, lets through answers whose failure rate is inside the predicted bound.

The gateway serves Tier 3 only (cpu-tier3), so an answer the gate rejects cannot escalate and is a 503: what
comes back 200 is exactly what the calibrated gate accepted."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from evals.suite import load_suite
from tests.conftest import ServerProcess
from tiers.routing import DEFAULT_ROUTING, load_routing

REPO = Path(__file__).resolve().parent.parent
LIMIT = 200
TARGET = 0.3
K = 5


def calibrate(routing: Path, store: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiers", "calibrate", "--feature", "review-sentiment",
                           "--suite", "sst2-sentiment", "--target-failure", str(TARGET), "--consistency-k", str(K),
                           "--limit", str(LIMIT), "--profile", "cpu-tier3", "--routing", str(routing),
                           "--store", str(store), *extra], cwd=REPO, capture_output=True, text=True, timeout=900)


def summary_of(run: subprocess.CompletedProcess) -> dict:
    return json.loads([line for line in run.stderr.splitlines() if line.startswith('{"feature"')][-1])


def test_the_written_threshold_holds_on_the_held_out_half(tmp_path):
    routing = tmp_path / "routing.yaml"
    routing.write_text(DEFAULT_ROUTING.read_text())
    store = tmp_path / "evals.db"

    dry = calibrate(routing, store, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    for signal in ("mean_logprob", "top1_margin", "agreement"):
        assert f"{signal} (target: failure bound <= 30.0%)" in dry.stdout
    assert "<= chosen" in dry.stdout
    assert routing.read_text() == DEFAULT_ROUTING.read_text() and not (tmp_path / "routing.yaml.bak").exists()

    run = calibrate(routing, store)  # the signals are in the store now: nothing is asked again
    assert run.returncode == 0, run.stderr[-3000:]
    summary = summary_of(run)
    assert summary["written"] and summary["errors"] == 0 and summary_of(dry)["threshold"] == summary["threshold"]
    fit, predicted = summary["fit"], summary["fit"]["failure_high"]
    assert predicted <= TARGET and 0 < fit["accepted"] < fit["n"]
    assert (tmp_path / "routing.yaml.bak").read_text() == DEFAULT_ROUTING.read_text()
    gate = load_routing(routing).features["review-sentiment"].gate.model_dump(exclude_none=True)
    assert gate == {"choices": ["negative", "positive"], **{k: v for k, v in summary["gate"].items() if v is not None}}

    strict = calibrate(routing, store, "--signal", "mean_logprob", "--target-failure", "0.01")  # stored: no model
    assert strict.returncode == 1 and "every answer would escalate" in strict.stderr
    assert load_routing(routing).features["review-sentiment"].gate.model_dump(exclude_none=True) == gate  # unchanged

    suite = load_suite("sst2-sentiment")
    held = suite.samples(LIMIT)[LIMIT // 2:]
    scorer = suite.build_scorer()
    gateway = ServerProcess("--routing", str(routing), log_path=tmp_path / "gateway.log")
    try:
        gateway.wait_ready()

        def one(sample):
            response = httpx.post(f"{gateway.base_url}/v1/chat/completions", timeout=120, json={
                "model": "feature:review-sentiment", "messages": suite.messages(sample), "temperature": 0, "seed": 0,
                "max_tokens": suite.max_tokens})
            if response.status_code == 503:
                assert "failed its gate" in response.json()["error"]["message"]
                return None
            assert response.status_code == 200, response.text
            assert response.headers["x-gate"].endswith(":ok")
            return scorer.score(response.json()["choices"][0]["message"]["content"], sample.target).verdict
        with ThreadPoolExecutor(2) as pool:
            verdicts = [v for v in pool.map(one, held) if v is not None]
    finally:
        gateway.stop()
    assert verdicts, "the calibrated gate accepted nothing on the held-out half"
    failure = sum(v != "correct" for v in verdicts) / len(verdicts)
    assert failure <= predicted, f"held-out failure {failure:.1%} of {len(verdicts)} is above the bound {predicted:.1%}"
    offline = summary["holdout"]
    assert abs(offline["accepted"] - len(verdicts)) <= 3  # the gateway's gate and calibrate's arithmetic agree
