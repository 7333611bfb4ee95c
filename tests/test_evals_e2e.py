"""Evals end to end with the real models: a killed run resumes, and promotion passes and fails on real answers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evals.store import ResultStore
from hardware.profile import PROFILES_DIR, load_profile

REPO = Path(__file__).resolve().parent.parent
SMOL = "smollm2-135m-instruct-q4_1"
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m"


def tier_runner(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiers", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, **kwargs)


def summaries(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith('{"version"')]


def rows(store: Path) -> list[tuple]:
    if not store.exists():
        return []
    db = sqlite3.connect(store)
    try:
        return db.execute("SELECT example_id, run_id FROM results ORDER BY example_id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def test_a_killed_run_continues_with_only_the_missing_examples(tmp_path, server):
    store = tmp_path / "evals.db"
    args = ["eval", "--url", server.base_url, "--suites", "sst2-sentiment", "--limit", "12", "--concurrency", "1",
            "--store", str(store)]
    proc = subprocess.Popen([sys.executable, "-m", "tiers", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(rows(store)) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = rows(store)
    assert 4 <= len(before) < 12, "the run should have been killed part-way"

    second = tier_runner(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    [summary] = summaries(second.stderr)
    assert summary["already_done"] == len(before) and summary["ran"] == 12 - len(before)
    after = rows(store)
    assert len(after) == 12 and set(before) <= set(after)  # finished examples were neither rerun nor rewritten
    assert "| sst2-sentiment |" in second.stdout and "[" in second.stdout

    third = tier_runner(*args)
    assert summaries(third.stderr)[0]["ran"] == 0


def test_errors_and_timeouts_are_retried_on_resume_and_reported_apart(tmp_path, server):
    """A gateway that was too slow, then down: neither is a wrong answer, and the next run tries those again."""
    from dataclasses import replace

    from evals.harness import resolve_target, run_suite
    from evals.report import summarize
    from evals.suite import load_suite
    from tests.conftest import free_port

    store = ResultStore(tmp_path / "evals.db")
    suite = load_suite("sst2-sentiment")
    target = resolve_target(server.base_url, "tier:3")
    slow = run_suite(suite.model_copy(update={"timeout_s": 0.001}), target, store, limit=4, progress=False)
    assert slow.outcomes["timeout"] == 4
    down = run_suite(suite, replace(target, base_url=f"http://127.0.0.1:{free_port()}"), store, limit=6,
                     progress=False)
    assert (down.already_done, down.ran, down.outcomes["error"]) == (0, 6, 6)
    report = summarize(suite.name, target.label, store.results(suite.name, target.config_hash(suite)))
    assert report.rate.n == 0 and report.as_dict()["not_scored"] == 6
    served = run_suite(suite, target, store, limit=6, progress=False)
    assert (served.already_done, served.ran) == (0, 6)
    assert served.outcomes["error"] + served.outcomes["timeout"] == 0
    report = summarize(suite.name, target.label, store.results(suite.name, target.config_hash(suite)))
    assert report.rate.n == 6 and report.as_dict()["not_scored"] == 0
    assert run_suite(suite, target, store, limit=6, progress=False).ran == 0
    store.close()


@pytest.fixture(scope="module")
def promotion(tmp_path_factory):
    folder = tmp_path_factory.mktemp("promote")
    profile = folder / "workstation.yaml"
    shutil.copy(PROFILES_DIR / "workstation.yaml", profile)
    return profile, folder / "evals.db"


def test_promotion_passes_for_the_stronger_model_and_writes_the_profile(promotion):
    profile, store = promotion
    common = ["promote", "--tier", "3", "--profile", str(profile), "--suites", "sst2-sentiment", "--limit", "16",
              "--store", str(store), "--target", "0.7"]
    dry = tier_runner(*common, "--candidate", QWEN, "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr[-3000:]
    assert "PASS" in dry.stdout and load_profile(profile)[1].tiers[3].model == SMOL
    assert not profile.with_name(profile.name + ".bak").exists()

    real = tier_runner(*common, "--candidate", QWEN)
    assert real.returncode == 0, real.stdout + real.stderr[-3000:]
    assert [s["ran"] for s in summaries(real.stderr)] == [0, 0]  # the dry run's answers are reused
    assert load_profile(profile)[1].tiers[3].model == QWEN
    assert load_profile(profile)[1].tiers[2] == load_profile("workstation")[1].tiers[2]  # only tier 3 was edited
    assert f"model: {SMOL}" in profile.with_name(profile.name + ".bak").read_text()
    assert "swaps tier 3 to it" in real.stderr  # live, once the new runner is ready
    decisions = ResultStore(store).decisions()
    assert [(d["passed"], d["dry_run"], d["applied"]) for d in decisions] == [(1, 1, 0), (1, 0, 1)]
    details = json.loads(decisions[-1]["details"])["suites"][0]
    assert details["paired_n"] == 16 and details["candidate_upper"] <= 0.7


def test_promotion_fails_with_the_table_of_why(promotion):
    profile, store = promotion  # tier 3 now serves Qwen; try to put SmolLM2 back under a strict target
    before = profile.read_text()
    result = tier_runner("promote", "--tier", "3", "--profile", str(profile), "--suites", "sst2-sentiment", "--limit",
                         "16", "--store", str(store), "--candidate", SMOL)
    assert result.returncode == 1, result.stdout + result.stderr[-3000:]
    assert "FAIL: upper bound" in result.stdout and "routing failure_targets[3]" in result.stdout
    assert profile.read_text() == before
    assert ResultStore(store).decisions()[-1]["passed"] == 0


def test_a_replay_of_stored_prompts_with_feedback_as_gold_through_the_feature(tmp_path):
    import httpx
    import yaml

    from tests.conftest import ServerProcess
    from tiers.routing import DEFAULT_ROUTING

    table = yaml.safe_load(DEFAULT_ROUTING.read_text())
    table["features"]["ticket-triage"]["store_text"] = {"retention_days": 1}
    routing = tmp_path / "routing.yaml"
    routing.write_text(yaml.safe_dump(table))
    server = ServerProcess("--routing", str(routing), log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        ids = []
        for text in ("My parcel never arrived", "I was charged twice", "How do I reset my password?"):
            r = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
                "model": "feature:ticket-triage", "temperature": 0, "seed": 0, "max_tokens": 32,
                "messages": [{"role": "user", "content": f"Name the queue (billing, shipping or account): {text}"}]})
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-request-id"])
        for request_id, outcome, note in [(ids[0], "accepted", None), (ids[1], "accepted", None),
                                          (ids[2], "corrected", "account")]:
            body = {"request_id": request_id, "outcome": outcome, **({"note": note} if note else {})}
            assert httpx.post(f"{server.base_url}/v1/feedback", json=body, timeout=10).status_code == 200
        suite = tmp_path / "triage-replay.yaml"
        suite.write_text(yaml.safe_dump({
            "name": "triage-replay", "feature": "ticket-triage", "tier": 3, "record": "replay", "n": 10,
            "max_tokens": 32, "source": {"ledger": str(server.data_dir), "feature": "ticket-triage"},
            "scorer": {"name": "exact"}}))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the ledger's writer moves spooled rows into the database
            result = tier_runner("eval", "--url", server.base_url, "--suites", str(suite), "--via", "feature",
                                 "--store", str(tmp_path / "evals.db"), "--concurrency", "1")
            assert result.returncode == 0, result.stderr[-3000:]
            if summaries(result.stderr)[0]["examples"] == 3:
                break
            time.sleep(1)
        [summary] = summaries(result.stderr)
        assert summary["examples"] == 3 and summary["target"].endswith("(feature:ticket-triage)")
        assert summary["outcomes"]["correct"] >= 2  # the accepted answers come back the same at temperature 0
    finally:
        server.stop()
