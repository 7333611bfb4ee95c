"""The ledger's promises under faults, through the real server and the real model: a database outage is served,
not a 500; bad spool lines show on /ready and /metrics; one spool per process; stored text is erased."""

from __future__ import annotations

import time

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerProcess
from tiers.auth import hash_key
from tiers.ledger import schema
from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.store import Ledger

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
  budgeted: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0, budget: {usd: 100, period: day, action: block}}
"""
SECRET, ADMIN = "tr-test-key-for-the-outage-0001", "tr-test-admin-key-for-the-outage"
KEYS = f"""admin_sha256: {hash_key(ADMIN)}
keys:
  - {{id: capped-client, sha256: {hash_key(SECRET)}, spend_cap: {{usd: 100, period: month}}}}
"""
ASK = [{"role": "user", "content": "Reply with one word: hello"}]


def write_config(tmp_path, keys: bool = False) -> list[str]:
    (tmp_path / "profile.yaml").write_text(PROFILE)
    (tmp_path / "routing.yaml").write_text(ROUTING)
    args = ["--profile", str(tmp_path / "profile.yaml"), "--routing", str(tmp_path / "routing.yaml")]
    if keys:
        (tmp_path / "keys.yaml").write_text(KEYS)
        args += ["--keys", str(tmp_path / "keys.yaml")]
    return args


def chat(server, model: str = "feature:ticket-triage", headers: dict | None = None) -> httpx.Response:
    body = {"model": model, "messages": ASK, "temperature": 0, "max_tokens": 4}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def metric(server, name: str, **labels) -> float:
    families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{server.base_url}/metrics").text)}
    return sum(s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items()))


def attempts(url: str) -> list[dict]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(schema.attempts)).mappings()]
    engine.dispose()
    return rows


def test_a_database_outage_is_served_and_spooled_then_replayed(postgres, fresh_postgres_url, tmp_path):
    """Before the fix, the first budget and spend-cap checks of a period read the database inline: a 500."""
    server = ServerProcess(*write_config(tmp_path, keys=True), "--ledger-url", fresh_postgres_url,
                           "--data-dir", str(tmp_path / "data"), log_path=tmp_path / "server.log")
    auth = {"Authorization": f"Bearer {SECRET}"}
    try:
        server.wait_ready()
        postgres.halt()
        try:
            answers = [chat(server, "feature:budgeted", auth) for _ in range(3)] + [chat(server, headers=auth)]
            assert [a.status_code for a in answers] == [200] * 4, answers[0].text
            deadline = time.monotonic() + 20
            while (ledger := httpx.get(f"{server.base_url}/ready").json()["ledger"])["state"] != "degraded":
                assert time.monotonic() < deadline, ledger
                time.sleep(0.2)
            assert metric(server, "tier_ledger_state", state="degraded") == 1
            feedback = httpx.post(f"{server.base_url}/v1/feedback", headers=auth, timeout=30,
                                  json={"request_id": answers[0].headers["x-request-id"], "outcome": "accepted"})
            assert feedback.status_code == 503 and feedback.json()["error"]["code"] == "ledger_unavailable"
            audit = httpx.get(f"{server.base_url}/v1/audit", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)
            assert audit.status_code == 503 and audit.json()["error"]["code"] == "ledger_unavailable"
        finally:
            postgres.launch()
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.base_url}/ready").json()["ledger"]["state"] != "ok":
            assert time.monotonic() < deadline, "the ledger never came back"
            time.sleep(0.2)
        ids = {a.headers["x-request-id"] for a in answers}
        deadline = time.monotonic() + 30
        while not ids <= {r["request_id"] for r in attempts(fresh_postgres_url)}:
            assert time.monotonic() < deadline, "spooled rows were not replayed"
            time.sleep(0.2)
        assert "Traceback" not in server.output()
    finally:
        server.stop()


def test_spool_lines_set_aside_show_on_ready_and_in_metrics(tmp_path):
    spool = tmp_path / "data" / "spool"
    spool.mkdir(parents=True)
    good = LedgerRow(attempt_id=new_attempt_id(), request_id="req_good", ts=time.time(), route="tier:3")
    (spool / "pending-1.jsonl").write_text(f"{good.model_dump_json()}\nnot json at all\n")
    server = ServerProcess(*write_config(tmp_path), "--data-dir", str(tmp_path / "data"),
                           log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        assert chat(server).status_code == 200
        deadline = time.monotonic() + 20
        while (ledger := httpx.get(f"{server.base_url}/ready").json()["ledger"])["dead_letters"] != 1:
            assert time.monotonic() < deadline, ledger
            time.sleep(0.2)
        assert ledger["state"] == "ok" and "dead-letter.jsonl" in ledger["detail"]
        assert metric(server, "tier_ledger_dead_letters") == 1
        assert metric(server, "tier_ledger_state", state="ok") == 1
        stored = {r["request_id"] for r in attempts(f"sqlite:///{tmp_path / 'data' / 'ledger.db'}")}
        assert "req_good" in stored
    finally:
        server.stop()


def test_a_second_gateway_on_the_same_data_dir_is_refused(tmp_path):
    args = (*write_config(tmp_path), "--data-dir", str(tmp_path / "data"))
    first = ServerProcess(*args, log_path=tmp_path / "first.log")
    try:
        first.wait_ready()
        second = ServerProcess(*args, log_path=tmp_path / "second.log")
        try:
            assert second.proc.wait(timeout=60) != 0
        finally:
            second.stop()
        message = second.output()
        assert str(tmp_path / "data" / "spool") in message and "--data-dir" in message
        assert chat(first).status_code == 200  # the first one never noticed
    finally:
        first.stop()
    again = ServerProcess(*args, log_path=tmp_path / "again.log")  # the lock went with the first process
    try:
        again.wait_ready()
    finally:
        again.stop()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_stored_text_past_its_retention_is_erased_when_the_gateway_starts(backend, request, tmp_path):
    url = f"sqlite:///{tmp_path / 'l.db'}" if backend == "sqlite" else request.getfixturevalue("fresh_postgres_url")
    ledger = Ledger(url, tmp_path / "seed-spool")
    ledger.migrate()
    expired = LedgerRow(attempt_id=new_attempt_id(), request_id="req_old", ts=time.time() - 2 * 86400,
                        route="feature:kept", prompt_text="a prompt", completion_text="an answer",
                        text_expires_at=time.time() - 86400)
    with ledger.engine.begin() as conn:
        conn.execute(schema.attempts.insert(), [expired.model_dump()])
    ledger.close()
    server = ServerProcess(*write_config(tmp_path), "--ledger-url", url, "--data-dir", str(tmp_path / "data"),
                           log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        deadline = time.monotonic() + 20
        while (row := attempts(url)[0])["prompt_text"] is not None:
            assert time.monotonic() < deadline, "stored text past its retention was never erased"
            time.sleep(0.2)
        assert row["completion_text"] is None and row["text_expires_at"] is None
    finally:
        server.stop()
