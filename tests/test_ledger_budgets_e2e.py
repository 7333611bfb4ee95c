"""Budgets and spend caps under concurrency, through the real server and the real model: admission reserves
each request's cost in the same step as the check, so a burst cannot all pass one check before any is charged.

Tier 3 is priced on completion tokens only, and every request makes exactly 4 (max_tokens 4, a prompt whose
answer is longer), so each costs, and reserves, exactly $0.004: a $0.01 limit admits 3 (0, 0.004 and 0.008 are
under it; 0.012 is not).
"""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import ServerProcess
from tiers.auth import hash_key
from tiers.ledger import schema

PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3:
    runner: llamacpp
    device: cpu
    model: smollm2-135m-instruct-q4_1
    max_batch: 4
    price: {input_per_m: 0.0, output_per_m: 1000.0}
"""
ROUTING = """features:
  open: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0}
  three-requests: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0,
                   budget: {usd: 0.01, period: day, action: block}}
"""
UNCAPPED, CAPPED = "tr-test-uncapped-key-0001", "tr-test-capped-key-0002"
KEYS = f"""keys:
  - {{id: uncapped, sha256: {hash_key(UNCAPPED)}}}
  - {{id: capped, sha256: {hash_key(CAPPED)}, spend_cap: {{usd: 0.01, period: month}}}}
"""
EACH_USD = 4 * 1000.0 / 1e6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("budgets")
    for name, text in (("profile.yaml", PROFILE), ("routing.yaml", ROUTING), ("keys.yaml", KEYS)):
        (root / name).write_text(text)
    proc = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                         "--keys", str(root / "keys.yaml"), "--data-dir", str(root / "data"),
                         log_path=root / "server.log")
    proc.ledger_url = f"sqlite:///{root / 'data' / 'ledger.db'}"
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def chat(server, feature: str, key: str) -> httpx.Response:
    body = {"model": f"feature:{feature}", "temperature": 0, "max_tokens": 4,
            "messages": [{"role": "user", "content": "Count from 1 to 50, separated by spaces."}]}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})


def burst(server, feature: str, key: str, n: int = 16) -> list[httpx.Response]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: chat(server, feature, key), range(n)))


def spent(server, request_ids: set[str]) -> float:
    engine = sa.create_engine(server.ledger_url)
    deadline = time.monotonic() + 20
    while True:
        with engine.connect() as conn:
            rows = [r for r in conn.execute(sa.select(schema.attempts)).mappings() if r["request_id"] in request_ids]
        if len(rows) >= len(request_ids) or time.monotonic() > deadline:
            engine.dispose()
            return sum(r["cost_usd"] for r in rows)
        time.sleep(0.2)


def test_sixteen_concurrent_requests_against_a_budget_that_admits_three(server):
    answers = burst(server, "three-requests", UNCAPPED)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 3 + [429] * 13, [a.text[:200] for a in answers if a.status_code not in (200, 429)]
    refused = [a.json()["error"] for a in answers if a.status_code == 429]
    assert {e["code"] for e in refused} == {"budget_exceeded"}
    admitted = [a for a in answers if a.status_code == 200]
    assert all(a.json()["usage"]["completion_tokens"] == 4 for a in admitted)
    assert spent(server, {a.headers["x-request-id"] for a in admitted}) == pytest.approx(3 * EACH_USD)
    assert chat(server, "three-requests", UNCAPPED).status_code == 429  # settled at $0.012: still over
    assert chat(server, "open", UNCAPPED).status_code == 200  # other features are not affected


def test_sixteen_concurrent_requests_against_a_key_spend_cap_that_admits_three(server):
    answers = burst(server, "open", CAPPED)
    assert sorted(a.status_code for a in answers) == [200] * 3 + [429] * 13
    refused = [a for a in answers if a.status_code == 429]
    assert {a.json()["error"]["code"] for a in refused} == {"spend_cap_exceeded"}
    assert all(int(a.headers["retry-after"]) >= 1 for a in refused)
    assert chat(server, "open", UNCAPPED).status_code == 200  # the cap is the key's, not the feature's
