"""The ledger filled by real requests through the real server, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import time

import httpx
import pytest
import yaml
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess
from tiers.audit import run_audit
from tiers.ledger import schema
from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.store import Ledger
from tiers.routing import RoutingTable

PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3:
    runner: llamacpp
    device: cpu
    model: smollm2-135m-instruct-q4_1
    max_batch: 4
    price: {input_per_m: 1.0, output_per_m: 2.0}
"""
ROUTING = """features:
  ticket-triage: {tier: 3, value: retention, owner: support, failure_cost_usd: 1}
  capped: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0, budget: {usd: 0.00001, period: day, action: block}}
  kept: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0, store_text: {retention_days: 1}}
  gated: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0, gate: {regex: "(?s).*"}}
  gated-other: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0, gate: {regex: "(?s).*?"}}
"""
ASK = [{"role": "user", "content": "Reply with one word: hello"}]


@pytest.fixture(params=["sqlite", "postgres"])
def served(request, tmp_path):
    """A gateway with a priced Tier 3 and its ledger on the given backend."""
    (tmp_path / "profile.yaml").write_text(PROFILE)
    (tmp_path / "routing.yaml").write_text(ROUTING)
    url = (f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_postgres_url"))
    args = ("--profile", str(tmp_path / "profile.yaml"), "--routing", str(tmp_path / "routing.yaml"),
            "--ledger-url", url, "--data-dir", str(tmp_path / "data"))
    proc = ServerProcess(*args, log_path=tmp_path / "server.log")
    proc.wait_ready()
    proc.ledger_url, proc.args = url, args
    yield proc
    proc.stop()


def chat(server, model="feature:ticket-triage", **extra) -> httpx.Response:
    body = {"model": model, "messages": ASK, "temperature": 0, "max_tokens": 4, **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


def ledger_rows(server) -> list[dict]:
    httpx.get(f"{server.base_url}/v1/audit", timeout=30)  # flushes the spool first
    engine = sa.create_engine(server.ledger_url)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(schema.attempts))]
    engine.dispose()
    return rows


def test_every_request_leaves_a_row_with_cost_tokens_and_latency(served):
    ok = chat(served)
    streamed = httpx.post(f"{served.base_url}/v1/chat/completions", timeout=60, json={
        "model": "feature:ticket-triage", "messages": ASK, "temperature": 0, "max_tokens": 4, "stream": True})
    missing = chat(served, model="feature:nope")
    assert (ok.status_code, streamed.status_code, missing.status_code) == (200, 200, 404)
    rows = {r["request_id"]: r for r in ledger_rows(served)}
    row = rows[ok.headers["x-request-id"]]
    usage = ok.json()["usage"]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6)
    assert float(ok.headers["x-cost-usd"]) == pytest.approx(row["cost_usd"])
    assert row["serving_tier"] == 3 and row["feature"] == "ticket-triage" and row["http_status"] == 200
    assert row["latency_ms"] > 0 and row["final"] and row["prompt_text"] is None
    stream_row = rows[streamed.headers["x-request-id"]]
    assert stream_row["ttft_ms"] is not None and stream_row["completion_tokens"] > 0
    error_row = rows[missing.headers["x-request-id"]]
    assert (error_row["http_status"], error_row["error_type"]) == (404, "model_not_found")


def test_a_streamed_answer_carries_its_cost_on_its_usage_chunk_as_its_row_does(served):
    """A stream has no x-cost-usd header: its cost rides on the final usage chunk as `usage.cost_usd`."""
    body = {"model": "feature:ticket-triage", "messages": ASK, "temperature": 0, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    streamed = httpx.post(f"{served.base_url}/v1/chat/completions", json=body, timeout=60)
    assert streamed.status_code == 200
    chunks = [json.loads(line[6:]) for line in streamed.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    usage = chunks[-1]["usage"]
    row = next(r for r in ledger_rows(served) if r["request_id"] == streamed.headers["x-request-id"])
    assert usage["cost_usd"] > 0 and usage["cost_usd"] == pytest.approx(row["cost_usd"])
    assert usage["cost_usd"] == pytest.approx((usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6)


def test_a_gated_attempt_names_the_hash_of_its_gates_arguments(served):
    """Two features whose gates differ only in an argument: each row ties its verdict to its own gate."""
    gated, other, plain = chat(served, model="feature:gated"), chat(served, model="feature:gated-other"), chat(served)
    assert (gated.status_code, other.status_code, plain.status_code) == (200, 200, 200)
    rows = {r["request_id"]: r for r in ledger_rows(served)}
    table = RoutingTable.model_validate(yaml.safe_load(ROUTING))
    first, second = (rows[r.headers["x-request-id"]] for r in (gated, other))
    assert first["gate"] == "regex" and first["gate_passed"]
    assert first["gate_spec"] == table.features["gated"].gate_hash and len(first["gate_spec"]) == 12
    assert second["gate_spec"] == table.features["gated-other"].gate_hash != first["gate_spec"]
    assert rows[plain.headers["x-request-id"]]["gate_spec"] is None


def test_feedback_changes_the_failure_rate(served):
    ids = [chat(served).headers["x-request-id"] for _ in range(4)]
    audit = httpx.get(f"{served.base_url}/v1/audit").json()
    triage = next(f for f in audit["features"] if f["feature"] == "ticket-triage")
    assert triage["requests"] == 4 and triage["failure_rate"] == 0
    for request_id in ids[:2]:
        response = httpx.post(f"{served.base_url}/v1/feedback", json={"request_id": request_id, "outcome": "corrected"})
        assert response.status_code == 200
    audit = httpx.get(f"{served.base_url}/v1/audit").json()
    triage = next(f for f in audit["features"] if f["feature"] == "ticket-triage")
    assert triage["failure_rate"] == 0.5
    assert 0 < triage["failure_rate_low"] < 0.5 < triage["failure_rate_high"] < 1


def test_feedback_errors(served):
    unknown = httpx.post(f"{served.base_url}/v1/feedback", json={"request_id": "req_nope", "outcome": "negative"})
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "request_id"
    request_id = chat(served).headers["x-request-id"]
    bad = httpx.post(f"{served.base_url}/v1/feedback", json={"request_id": request_id, "outcome": "meh"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "outcome"


def test_metrics_parse_and_match_the_ledger(served):
    for _ in range(3):
        chat(served)
    chat(served, model="feature:nope")
    text = httpx.get(f"{served.base_url}/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = sum(s.value for s in families["tier_requests"].samples if s.name == "tier_requests_total")
    tokens = sum(s.value for s in families["tier_tokens"].samples if s.name == "tier_tokens_total")
    errors = sum(s.value for s in families["tier_errors"].samples if s.name == "tier_errors_total")
    rows = ledger_rows(served)
    assert requests == sum(1 for r in rows if r["final"]) == 4
    assert tokens == sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert errors == sum(1 for r in rows if r["error_type"]) == 1
    assert "tier_request_latency_seconds" in families


def test_budget_in_block_mode_answers_429_at_the_limit(served):
    first = chat(served, model="feature:capped")
    assert first.status_code == 200  # under budget until this answer's cost is booked
    blocked = chat(served, model="feature:capped")
    assert blocked.status_code == 429
    error = blocked.json()["error"]
    assert error["code"] == "budget_exceeded" and "capped" in error["message"]
    assert chat(served).status_code == 200  # other features are not affected
    audit = httpx.get(f"{served.base_url}/v1/audit").json()
    assert "OVER_BUDGET" in next(f for f in audit["features"] if f["feature"] == "capped")["flags"]


def test_opted_in_feature_keeps_text_with_an_expiry(served):
    response = chat(served, model="feature:kept")
    row = next(r for r in ledger_rows(served) if r["request_id"] == response.headers["x-request-id"])
    assert json.loads(row["prompt_text"])[0]["content"] == ASK[0]["content"]
    assert row["completion_text"] == response.json()["choices"][0]["message"]["content"]
    assert row["text_expires_at"] > time.time() + 3600


def test_sigkill_under_load_keeps_every_answered_row(served, tmp_path):
    answered: list[str] = []

    def one(i: int) -> str | None:
        try:
            r = chat(served, messages=[{"role": "user", "content": f"Count to {i}"}], max_tokens=24)
        except httpx.HTTPError:
            return None
        return r.headers["x-request-id"] if r.status_code == 200 else None

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(one, i) for i in range(40)]
        deadline = time.monotonic() + 60
        while sum(f.done() for f in futures) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(served.proc.pid, signal.SIGKILL)
        answered = [f.result() for f in futures]
    answered = [a for a in answered if a]
    assert 10 <= len(answered) < 40
    restarted = ServerProcess(*served.args, log_path=tmp_path / "restarted.log")
    try:
        restarted.wait_ready()
        restarted.ledger_url = served.ledger_url
        stored = {r["request_id"] for r in ledger_rows(restarted) if r["final"]}
    finally:
        restarted.stop()
    assert set(answered) <= stored


def seeded_audit(url: str, tmp_path) -> dict:
    table = RoutingTable.model_validate({"features": {
        "contract-review": {"tier": 3, "value": "risk", "owner": "legal", "failure_cost_usd": 500},
        "lead-scoring": {"tier": 2, "value": "revenue", "owner": "sales", "failure_cost_usd": 50},
        "faq-bot": {"tier": 1, "value": "internal", "owner": "it", "failure_cost_usd": 1},
        "new-feature": {"tier": 2, "value": "retention", "owner": "x", "failure_cost_usd": 1},
    }})
    ledger = Ledger(url, tmp_path / "spool")
    ledger.start()
    now = time.time()

    def rows(feature, tier, n, failures, cost):
        return [LedgerRow(attempt_id=new_attempt_id(), request_id=f"{feature}-{i}", ts=now - 60, route=f"feature:{feature}",
                          feature=feature, declared_tier=tier, serving_tier=tier, model=f"model-t{tier}",
                          cost_usd=cost, latency_ms=100, error_type="runner_failed" if i < failures else None)
                for i in range(n)]

    ledger.record(rows("contract-review", 3, 40, 12, 0.0001) + rows("lead-scoring", 2, 100, 40, 0.001)
                  + rows("faq-bot", 1, 100, 0, 0.02))
    assert ledger.flush()
    audit = run_audit(ledger.engine, table, since=now - 3600)
    ledger.close()
    return {row.feature: row for row in audit.rows}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_seeded_ledger_flags_inversion_overspend_and_no_data(backend, request, tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    rows = seeded_audit(url, tmp_path)
    assert rows["contract-review"].flags == ["INVERTED"]  # risk feature on the cheap tier
    assert rows["lead-scoring"].flags == ["INVERTED"]  # 40% failures, far above Tier 2's 5% target
    assert rows["faq-bot"].flags == ["OVERSPEND"]  # internal FAQ on Tier 1 that never fails
    assert rows["new-feature"].flags == ["NO_DATA"]
    assert rows["faq-bot"].spend_share > 0.9
    assert rows["lead-scoring"].effective_cost_per_success == pytest.approx((0.1 + 40 * 50) / 60)
