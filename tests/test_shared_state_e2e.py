"""Two gateway processes on one real PostgreSQL ledger and one real Redis (`--redis-url`), as two replicas behind a
load balancer: a key's rate limit and spend cap hold across both, an answer invalidated on one is gone on the
other, a reload on one is announced to the other, both writers' rows make one audit, and stopping Redis gives
the documented degraded behaviour (fail_open keys served, fail_closed keys 503, never a 500), on /ready and
/metrics, until it is back.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import ServerProcess, new_database
from tiers.auth import hash_key

PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, threads: 1, max_batch: 4, n_ctx: 1024,
      price: {input_per_m: 0, output_per_m: 1000}}
"""
ROUTING = """features:
  chat: {tier: 3, value: internal, owner: ops, failure_cost_usd: 1}
  faq: {tier: 3, value: internal, owner: ops, failure_cost_usd: 1, cache: {threshold: 0.9, ttl_s: 3600, shared: true}}
"""
ADDED = "  added: {tier: 3, value: internal, owner: ops, failure_cost_usd: 1}\n"
SECRETS = {name: f"sk-{name}-{uuid.uuid4().hex}" for name in ("admin", "limited", "capped", "lenient", "strict")}
KEYS = f"""admin_sha256: {hash_key(SECRETS['admin'])}
keys:
  - {{id: limited, sha256: {hash_key(SECRETS['limited'])}, rate_limit: {{requests_per_minute: 30}}}}
  - {{id: capped, sha256: {hash_key(SECRETS['capped'])}, spend_cap: {{usd: 0.02, period: day}}}}
  - {{id: lenient, sha256: {hash_key(SECRETS['lenient'])}, rate_limit: {{requests_per_minute: 1000}}}}
  - {{id: strict, sha256: {hash_key(SECRETS['strict'])}, rate_limit: {{requests_per_minute: 1000}},
      on_redis_outage: fail_closed}}
"""
MAX_TOKENS = 4  # at $1000 per million completion tokens: a request reserves, and costs at most, $0.004


@pytest.fixture(scope="module")
def ledger_url(postgres):
    return new_database(postgres)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, redis_server, ledger_url):
    root = tmp_path_factory.mktemp("replicas")
    (root / "profile.yaml").write_text(PROFILE)
    (root / "keys.yaml").write_text(KEYS)
    procs = []
    try:
        for name in ("a", "b"):
            (root / f"routing-{name}.yaml").write_text(ROUTING)  # each replica reads its own copy
            procs.append(ServerProcess("--profile", str(root / "profile.yaml"), "--routing",
                                       str(root / f"routing-{name}.yaml"), "--keys", str(root / "keys.yaml"),
                                       "--ledger-url", ledger_url, "--redis-url", redis_server.url,
                                       "--reload-interval", "0", log_path=root / f"{name}.log"))
        for proc in procs:
            proc.wait_ready(timeout=180)
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def body(feature: str, text: str) -> dict:
    return {"model": f"feature:{feature}", "messages": [{"role": "user", "content": text}], "temperature": 0,
            "max_tokens": MAX_TOKENS}


def chat(server, key: str, feature: str = "chat", text: str = "Say yes.") -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body(feature, text), timeout=120,
                      headers={"authorization": f"Bearer {SECRETS[key]}"})


async def burst(replicas, key: str, n: int) -> list[httpx.Response]:
    """n requests at once, alternating between the replicas (as a round-robin load balancer would)."""
    async with httpx.AsyncClient(timeout=120, headers={"authorization": f"Bearer {SECRETS[key]}"}) as client:
        return await asyncio.gather(*(client.post(f"{replicas[i % 2].base_url}/v1/chat/completions",
                                                  json=body("chat", f"Say yes ({i}).")) for i in range(n)))


def ready(server) -> dict:
    return httpx.get(f"{server.base_url}/ready", timeout=10).json()


def test_a_key_limited_to_30_a_minute_gets_30_in_all_across_both_replicas(replicas):
    started = time.monotonic()
    # one request on each replica first, so that both draw from the bucket whatever order the burst lands in
    first = [chat(replica, "limited") for replica in replicas]
    assert [r.status_code for r in first] == [200, 200], [r.text for r in first]
    responses = asyncio.run(burst(replicas, "limited", 58))
    elapsed = time.monotonic() - started
    codes = [r.status_code for r in responses]
    ok = 2 + codes.count(200)
    by_replica = [1 + sum(r.status_code == 200 for r in responses[i::2]) for i in (0, 1)]
    print(f"\nshared limit: {ok} of 60 admitted across both replicas ({by_replica}) in {elapsed:.1f} s; "
          f"{codes.count(429)} refused with 429")
    assert set(codes) == {200, 429}
    # a bucket per replica would admit up to 60; the one shared bucket admits 30, plus one per 2 s of refill
    assert 30 <= ok <= 30 + int(elapsed / 2) + 1
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limit_exceeded" and int(refused.headers["retry-after"]) >= 1


def test_a_spend_cap_holds_across_both_replicas(replicas, ledger_url):
    responses = asyncio.run(burst(replicas, "capped", 24))
    responses += [chat(replicas[i % 2], "capped", text=f"Say no ({i}).") for i in range(6)]
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == len(responses) and ok and refused
    assert {r.json()["error"]["code"] for r in refused} == {"spend_cap_exceeded"}
    httpx.get(f"{replicas[0].base_url}/v1/audit", headers={"authorization": f"Bearer {SECRETS['admin']}"})
    httpx.get(f"{replicas[1].base_url}/v1/audit", headers={"authorization": f"Bearer {SECRETS['admin']}"})
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        spent = conn.execute(sa.text("SELECT coalesce(sum(cost_usd), 0) FROM attempts WHERE client_key_id = 'capped'"))\
            .scalar()
    engine.dispose()
    print(f"\nshared spend cap: {len(ok)} of {len(responses)} answered for ${spent:.4f} against a $0.02 cap; "
          f"{len(refused)} refused")
    assert spent <= 0.02 + 0.004 + 1e-9  # at most one request's worth past the cap, not a cap per replica
    assert abs(spent - sum(float(r.headers["x-cost-usd"]) for r in ok)) < 1e-9


def test_an_answer_invalidated_on_one_replica_is_gone_on_the_other(replicas):
    a, b = replicas
    assert chat(a, "lenient", "faq", "When do you open?").headers["x-cache"] == "miss"
    deadline, served = time.monotonic() + 15, None
    while served is None and time.monotonic() < deadline:
        r = chat(b, "lenient", "faq", "When do you open?")
        served = r if r.headers["x-cache"] == "hit" else None
        time.sleep(0.1)
    assert served is not None, "replica b never served replica a's answer"
    gone = httpx.delete(f"{a.base_url}/admin/cache/{served.headers['x-request-id']}",
                        headers={"authorization": f"Bearer {SECRETS['admin']}"})
    assert gone.status_code == 200, gone.text
    assert chat(b, "lenient", "faq", "When do you open?").headers["x-cache"] == "miss"


def test_a_reload_on_one_replica_is_announced_to_the_other(replicas):
    a, b = replicas
    for name in ("a", "b"):  # the new table is deployed to both copies; neither watches its file
        path = a.log_path.parent / f"routing-{name}.yaml"
        path.write_text(ROUTING + ADDED)
    models = lambda s: httpx.get(f"{s.base_url}/v1/models", headers={"authorization": f"Bearer {SECRETS['lenient']}"})  # noqa: E731
    assert "feature:added" not in [m["id"] for m in models(b).json()["data"]]
    reloaded = httpx.post(f"{a.base_url}/admin/reload", headers={"authorization": f"Bearer {SECRETS['admin']}"},
                          timeout=60)
    assert reloaded.status_code == 200 and reloaded.json()["announced_to"] == 1, reloaded.text
    deadline = time.monotonic() + 10
    while "feature:added" not in [m["id"] for m in models(b).json()["data"]] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "feature:added" in [m["id"] for m in models(b).json()["data"]]


def test_both_writers_rows_make_one_audit_on_either_replica(replicas, ledger_url):
    a, b = replicas
    served = [chat(s, "lenient", text=f"Pick a number ({i}).") for i, s in enumerate((a, b, a, b))]
    assert [r.status_code for r in served] == [200] * 4
    admin = {"authorization": f"Bearer {SECRETS['admin']}"}
    httpx.get(f"{a.base_url}/v1/audit", headers=admin)  # flushes a's spool
    feedback = httpx.post(f"{b.base_url}/v1/feedback", headers={"authorization": f"Bearer {SECRETS['lenient']}"},
                          json={"request_id": served[0].headers["x-request-id"], "outcome": "corrected"})
    assert feedback.status_code == 200, feedback.text  # b records feedback on an answer a served
    audits = [httpx.get(f"{s.base_url}/v1/audit", headers=admin).json() for s in (a, b)]
    chat_rows = [[f for f in audit["features"] if f["feature"] == "chat"][0] for audit in audits]
    engine = sa.create_engine(ledger_url)
    with engine.connect() as conn:
        finals, distinct = conn.execute(sa.text("SELECT count(*), count(DISTINCT request_id) FROM attempts "
                                                "WHERE feature = 'chat' AND final")).one()
        spend = conn.execute(sa.text("SELECT coalesce(sum(cost_usd), 0) FROM attempts WHERE feature = 'chat'")).scalar()
    engine.dispose()
    assert finals == distinct  # one final row per request, whichever replica wrote it
    for row in chat_rows:
        assert row["requests"] == finals and abs(row["spend_usd"] - round(spend, 8)) < 1e-8
    assert chat_rows[0]["failure_rate_text"] == chat_rows[1]["failure_rate_text"]


def test_stopping_redis_degrades_as_documented_and_never_answers_500(replicas, redis_server):
    a, b = replicas
    redis_server.stop()
    try:
        deadline = time.monotonic() + 10
        while ready(a)["shared_state"]["state"] != "degraded" and time.monotonic() < deadline:
            time.sleep(0.1)
        state = ready(a)
        lenient = [chat(s, "lenient") for s in (a, b, a, b)]
        strict = [chat(s, "strict") for s in (a, b)]
        cached = chat(a, "lenient", "faq", "When do you open?")
        metrics = httpx.get(f"{a.base_url}/metrics").text
    finally:
        redis_server.start()
    print(f"\nredis outage: lenient {[r.status_code for r in lenient]}, strict {[r.status_code for r in strict]}, "
          f"cache {cached.status_code} x-cache {cached.headers.get('x-cache')}; /ready {state['status']} "
          f"shared_state {state['shared_state']['state']}: {state['shared_state']['detail']}")
    assert state["status"] == "ready" and state["shared_state"]["state"] == "degraded"
    assert redis_server.url not in str(state) and "sk-" not in str(state)
    assert [r.status_code for r in lenient] == [200] * 4  # fail_open: this replica's own limits
    assert [r.status_code for r in strict] == [503, 503]  # fail_closed
    assert strict[0].json()["error"]["code"] == "limits_unavailable" and "retry-after" in strict[0].headers
    assert cached.status_code == 200 and cached.headers["x-cache"] == "error"
    assert 'tier_shared_state{state="degraded"} 1.0' in metrics
    assert 'tier_shared_outage_decisions_total{decision="fail_closed"} 1.0' in metrics
    deadline = time.monotonic() + 15
    while ready(a)["shared_state"]["state"] != "ok" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ready(a)["shared_state"]["state"] == "ok"
    assert chat(a, "strict").status_code == 200
