"""Tier recommendations on a seeded ledger (real SQLite through the real ledger writer): a clearly over-tiered
feature gets a move down, a clearly inverted one a move up, one with too little data "not enough evidence";
the same through `tier-runner recommend`, and GET /v1/recommendations on a real gateway reading that ledger."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hardware.profile import Price
from tests.conftest import ServerProcess
from tiers.auth import hash_key
from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.store import Ledger
from tiers.recommend import recommendations
from tiers.routing import load_routing

REPO = Path(__file__).resolve().parent.parent
ROUTING = """
features:
  faq-bot: {tier: 1, value: internal, owner: it, failure_cost_usd: 0.05,
            shadow: {sample: 0.5, tier: 3, compare: label}}
  contract-review: {tier: 3, value: risk, owner: legal, failure_cost_usd: 500,
                    gate: {regex: '.+'}, escalate_to: 1}
  knowledge-qa: {tier: 3, value: internal, owner: docs, failure_cost_usd: 1}
"""
PROFILE = """
devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1}
  1: {runner: hosted, model: gpt-4o-mini, api_key_env: NO_SUCH_KEY_FOR_TESTS, optional: true,
      price: {input_per_m: 2.5, output_per_m: 10}}
"""
PRICES = {3: Price(), 1: Price(input_per_m=2.5, output_per_m=10)}


def row(request_id: str, feature: str, tier: int, served: int, **extra) -> LedgerRow:
    fields = {"attempt_id": new_attempt_id(), "request_id": request_id, "ts": time.time() - 3600,
              "route": f"feature:{feature}", "feature": feature, "declared_tier": tier, "serving_tier": served,
              "model": f"model-t{served}", "prompt_tokens": 800, "completion_tokens": 150, "latency_ms": 50,
              "cost_usd": PRICES[served].cost_usd(800, 150), **extra}
    return LedgerRow(**fields)


def seed(folder: Path) -> Path:
    """A week of traffic: faq-bot on Tier 1, rarely failing, shadowed by Tier 3 that agrees 98% of the time;
    contract-review on Tier 3 failing its gate 30% of the time, escalated to Tier 1 which almost never fails;
    knowledge-qa with 8 requests."""
    rows = []
    for i in range(400):
        rows.append(row(f"faq-{i}", "faq-bot", 1, 1, error_type="runner_failed" if i < 4 else None))
    for i in range(300):
        parent = rows[i]
        rows.append(LedgerRow(attempt_id=new_attempt_id(), request_id=parent.request_id, parent_id=parent.attempt_id,
                              attempt_no=2, final=False, ts=parent.ts, route="shadow:faq-bot", declared_tier=1,
                              serving_tier=3, model="model-t3", prompt_tokens=800, completion_tokens=150,
                              gate="shadow:label", shadow_of="faq-bot", shadow_agreed=i >= 6))
    for i in range(300):
        failed = i < 90
        first = row(f"cr-{i}", "contract-review", 3, 3, gate="regex", gate_passed=not failed, final=not failed)
        rows.append(first)
        if failed:
            rows.append(row(f"cr-{i}", "contract-review", 3, 1, escalated=True, attempt_no=2, parent_id=first.attempt_id,
                            gate="regex", gate_passed=i != 0))
    rows += [row(f"kq-{i}", "knowledge-qa", 3, 3) for i in range(8)]
    ledger = Ledger(f"sqlite:///{folder / 'ledger.db'}", folder / "spool")
    ledger.start()
    ledger.record(rows)
    assert ledger.flush()
    ledger.close()
    (folder / "routing.yaml").write_text(ROUTING)
    (folder / "profile.yaml").write_text(PROFILE)
    return folder


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    return seed(tmp_path_factory.mktemp("seeded"))


def test_a_move_down_a_move_up_and_not_enough_evidence(seeded):
    from tiers.ledger.store import make_engine

    table = load_routing(seeded / "routing.yaml")
    now = time.time()
    recs = {r.feature: r for r in recommendations(make_engine(f"sqlite:///{seeded / 'ledger.db'}"), table, PRICES,
                                                  now - 7 * 86400, now)}
    down, up, unsure = recs["faq-bot"], recs["contract-review"], recs["knowledge-qa"]
    assert (down.verdict, down.move_to) == ("move", 3)
    assert down.text.startswith("faq-bot: Tier 1 → Tier 3, failure 1.0% [0.4, 2.5] vs 2.0% [0.9, 4.3], saves $")
    # 400 requests last week at $0.0035 each on Tier 1, 1% x $0.05 failures, against 2% x $0.05 on a free Tier 3
    assert down.monthly_saving_usd == pytest.approx(400 * 30 / 7 * ((0.0035 + 0.01 * 0.05) - (0 + 0.02 * 0.05)))
    assert (up.verdict, up.move_to) == ("move", 1)
    assert up.text.startswith("contract-review: Tier 3 → Tier 1, failure 30.0% [25.1, 35.4] vs 1.1% [0.2, 6.0]")
    assert up.monthly_saving_usd > 50_000
    assert unsure.verdict == "not_enough_evidence" and unsure.move_to is None
    assert "not enough evidence" in unsure.text and "8 observations" in unsure.text
    tiers = {t["tier"]: t for t in down.as_dict()["tiers"]}
    assert tiers[3]["judged_by"] == "shadow (tier 3)" and tiers[1]["judged_by"] == "ledger"
    assert tiers[3]["cost_per_success_high"] < tiers[1]["cost_per_success_low"]  # the intervals separate


def test_the_cli_prints_the_same_and_never_applies_without_asking(seeded, tmp_path):
    before = (seeded / "routing.yaml").read_text()
    run = subprocess.run([sys.executable, "-m", "tiers", "recommend", "--routing", str(seeded / "routing.yaml"),
                          "--profile", str(seeded / "profile.yaml"), "--data-dir", str(seeded),
                          "--store", str(tmp_path / "evals.db"), "--suites", "sst2-sentiment"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "faq-bot: Tier 1 → Tier 3" in run.stdout and "contract-review: Tier 3 → Tier 1" in run.stdout
    assert "knowledge-qa: not enough evidence" in run.stdout
    assert (seeded / "routing.yaml").read_text() == before
    refused = subprocess.run([sys.executable, "-m", "tiers", "recommend", "--routing", str(seeded / "routing.yaml"),
                              "--profile", str(seeded / "profile.yaml"), "--data-dir", str(seeded),
                              "--store", str(tmp_path / "evals.db"), "--suites", "sst2-sentiment",
                              "--apply", "knowledge-qa"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "nothing to apply" in refused.stderr
    no_suite = subprocess.run([sys.executable, "-m", "tiers", "recommend", "--routing", str(seeded / "routing.yaml"),
                               "--profile", str(seeded / "profile.yaml"), "--data-dir", str(seeded),
                               "--store", str(tmp_path / "evals.db"), "--suites", "sst2-sentiment",
                               "--apply", "faq-bot"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert no_suite.returncode != 0 and "no eval suite stands for faq-bot" in no_suite.stderr
    assert (seeded / "routing.yaml").read_text() == before


def test_the_gateway_serves_them_to_the_admin(seeded, tmp_path):
    admin_key = "trk-test-admin-recommendations-5521"
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"admin_sha256: {hash_key(admin_key)}\nkeys: []\n")
    gateway = ServerProcess("--profile", str(seeded / "profile.yaml"), "--routing", str(seeded / "routing.yaml"),
                            "--data-dir", str(seeded), "--keys", str(keys), log_path=tmp_path / "gw.log")
    try:
        gateway.wait_ready()
        url = f"{gateway.base_url}/v1/recommendations"
        assert httpx.get(url, timeout=30).status_code == 401
        body = httpx.get(url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60).json()
        dashboard = f"{gateway.base_url}/dashboard"
        refused = httpx.get(dashboard, timeout=30)  # a browser asks for the key (Basic auth), then sends it again
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic ")
        assert httpx.get(dashboard, auth=("me", "not-the-key"), timeout=30).status_code == 401
        page = httpx.get(dashboard, auth=("me", admin_key), timeout=120)
        assert page.status_code == 200 and "faq-bot: Tier 1 → Tier 3" in page.text
        assert httpx.get(dashboard, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120).status_code == 200
    finally:
        gateway.stop()
    verdicts = {r["feature"]: (r["verdict"], r["move_to"]) for r in body["recommendations"]}
    assert verdicts == {"faq-bot": ("move", 3), "contract-review": ("move", 1),
                        "knowledge-qa": ("not_enough_evidence", None)}
    assert body["applied"] is False
    print(json.dumps(body["recommendations"][0], indent=1)[:400])
