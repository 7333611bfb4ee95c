"""`tier-runner calibrate` with the real model on a shipped suite: the threshold it writes, applied by a real gateway's
gate to the held-out half, lets through answers whose failure rate agrees with the predicted bound: the held-out
interval starts at or under it. (The point rate of a few dozen answers lands above a correct bound too often: CI
saw 11/32 = 34.4% against a bound of 28.2%, an interval of [18.6%, 53.2%].)

The gateway serves Tier 3 only (cpu-tier3), so an answer the gate rejects cannot escalate and is a 503: what
comes back 200 is exactly what the calibrated gate accepted."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from evals.calibrate import clopper_pearson
from evals.suite import load_suite
from tests.conftest import ServerProcess
from tiers.routing import DEFAULT_ROUTING, load_routing

REPO = Path(__file__).resolve().parent.parent
LIMIT = 200
K = 5
ROW = re.compile(r"^ +\S+ +(\d+) +\S+% +\d+ +\S+% \[\S+%, (\S+)%\]", re.M)  # accepted ... [low, high]


def calibrate(routing: Path, store: Path, target: float, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiers", "calibrate", "--feature", "review-sentiment",
                           "--suite", "sst2-sentiment", "--target-failure", str(target), "--consistency-k", str(K),
                           "--limit", str(LIMIT), "--profile", "cpu-tier3", "--routing", str(routing),
                           "--store", str(store), *extra], cwd=REPO, capture_output=True, text=True, timeout=900)


def target_between(curves: str) -> float:
    """A target the fit can meet without accepting everything: halfway between the lowest failure bound any
    threshold reaches and the bound of accepting every answer. Where SmolLM2 lands between the two differs
    from CPU to CPU (llama.cpp's arithmetic follows the SIMD it finds), so a fixed target sits on one side of
    the edge on one machine and on the other elsewhere: 30% was met at 28.2% in one CI run and missed at 30.3% on
    another machine (AMD EPYC, session 25)."""
    rows = [(int(accepted), float(high)) for accepted, high in ROW.findall(curves)]
    assert rows, curves
    most = max(accepted for accepted, _ in rows)
    best, everything = min(high for _, high in rows), min(high for accepted, high in rows if accepted == most)
    assert everything - best >= 2, f"no threshold does better than accepting everything:\n{curves}"
    return round((best + everything) / 2 / 100, 4)


def summary_of(run: subprocess.CompletedProcess) -> dict:
    return json.loads([line for line in run.stderr.splitlines() if line.startswith('{"feature"')][-1])


def test_the_written_threshold_holds_on_the_held_out_half(tmp_path):
    routing = tmp_path / "routing.yaml"
    routing.write_text(DEFAULT_ROUTING.read_text())
    store = tmp_path / "evals.db"

    first = calibrate(routing, store, 0.3, "--dry-run")  # asks the model; the curves do not depend on the target
    assert first.returncode in (0, 1), first.stderr[-3000:]
    target = target_between(first.stdout)
    dry = calibrate(routing, store, target, "--dry-run")  # the signals are in the store now: nothing is asked again
    assert dry.returncode == 0, dry.stderr[-3000:]
    for signal in ("mean_logprob", "top1_margin", "agreement"):
        assert f"{signal} (target: failure bound <= {target:.1%})" in dry.stdout
    assert "<= chosen" in dry.stdout
    assert routing.read_text() == DEFAULT_ROUTING.read_text() and not (tmp_path / "routing.yaml.bak").exists()

    run = calibrate(routing, store, target)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = summary_of(run)
    assert summary["written"] and summary["errors"] == 0 and summary_of(dry)["threshold"] == summary["threshold"]
    fit, predicted = summary["fit"], summary["fit"]["failure_high"]
    assert predicted <= target and 0 < fit["accepted"] < fit["n"]
    assert (tmp_path / "routing.yaml.bak").read_text() == DEFAULT_ROUTING.read_text()
    gate = load_routing(routing).features["review-sentiment"].gate.model_dump(exclude_none=True)
    assert gate == {"choices": ["negative", "positive"], **{k: v for k, v in summary["gate"].items() if v is not None}}

    strict = calibrate(routing, store, 0.01, "--signal", "mean_logprob")  # stored: no model
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
    failures = sum(v != "correct" for v in verdicts)
    low = clopper_pearson(failures, len(verdicts))[0]
    assert low <= predicted, (f"held-out failure {failures}/{len(verdicts)} contradicts the bound {predicted:.1%}: "
                              f"its own 95% interval starts at {low:.1%}")
    offline = summary["holdout"]
    assert abs(offline["accepted"] - len(verdicts)) <= 3  # the gateway's gate and calibrate's arithmetic agree
