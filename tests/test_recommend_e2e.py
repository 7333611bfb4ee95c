"""`tier-runner recommend --apply` with real models: the recommended move of an inverted feature is put through the
promotion gate (its suite on the current tier and on the recommended one, real gateways) and the routing table
is edited only when the gate passes: first it fails on Tier 2's target and nothing changes, then, with a target
the candidate meets, the feature moves and the old table is kept as .bak. Between the two, the eval results the
gate stored join the evidence (SNIPS intents, where SmolLM2 and Qwen differ by far), and the move still holds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.store import Ledger
from tiers.routing import load_routing

REPO = Path(__file__).resolve().parent.parent
ROUTING = """
features:
  intent-detection:
    tier: 3
    value: internal
    owner: platform
    failure_cost_usd: 0.1
    gate: {{regex: '.+'}}
failure_targets: {{1: 0.02, 2: {target}, 3: 0.15}}
"""
PROFILE = """
devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 2}
  2: {runner: llamacpp, device: cpu, model: qwen2.5-coder-0.5b-instruct-q4_k_m, max_batch: 2}
"""


def seed(folder: Path) -> None:
    """A week of intent-detection on Tier 3 failing its gate 70% of the time; the escalations to Tier 2 fail 10%."""
    def attempt(i: int, tier: int, **extra) -> LedgerRow:
        return LedgerRow(attempt_id=new_attempt_id(), request_id=f"id-{i}", ts=time.time() - 3600,
                         route="feature:intent-detection", feature="intent-detection", declared_tier=3,
                         serving_tier=tier, model=f"model-t{tier}", prompt_tokens=60, completion_tokens=5,
                         gate="regex", **extra)

    rows: list[LedgerRow] = []
    for i in range(300):
        failed = i < 210
        rows.append(attempt(i, 3, gate_passed=not failed, final=not failed))
        if failed:
            rows.append(attempt(i, 2, escalated=True, attempt_no=2, parent_id=rows[-1].attempt_id, gate_passed=i >= 21))
    ledger = Ledger(f"sqlite:///{folder / 'ledger.db'}", folder / "spool")
    ledger.start()
    ledger.record(rows)
    assert ledger.flush()
    ledger.close()


def recommend(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiers", "recommend", "--routing", str(folder / "routing.yaml"),
                           "--profile", str(folder / "profile.yaml"), "--data-dir", str(folder),
                           "--store", str(folder / "evals.db"), "--suites", "snips-intent", *extra],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)


def test_apply_edits_the_table_only_when_the_promotion_gate_passes(tmp_path):
    seed(tmp_path)
    (tmp_path / "profile.yaml").write_text(PROFILE)
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING.format(target=0.05))
    before = routing.read_text()

    shown = recommend(tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "intent-detection: Tier 3 → Tier 2, failure 70.0% [" in shown.stdout

    failed = recommend(tmp_path, "--apply", "intent-detection", "--limit", "60")
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "FAIL: upper bound" in failed.stdout and "the promotion gate FAILED" in failed.stderr
    assert routing.read_text() == before and not (tmp_path / "routing.yaml.bak").exists()

    routing.write_text(ROUTING.format(target=0.6))  # a target the candidate can meet; the results are reused
    passed = recommend(tmp_path, "--apply", "intent-detection", "--limit", "60")
    assert passed.returncode == 0, passed.stdout + passed.stderr[-3000:]
    assert "(eval:snips-intent)" in passed.stdout  # the gate's own results are evidence now
    assert "PASS" in passed.stdout and "moved intent-detection from tier 3 to tier 2" in passed.stderr
    assert load_routing(routing).features["intent-detection"].tier == 2
    assert (tmp_path / "routing.yaml.bak").read_text() == ROUTING.format(target=0.6)
