"""The cache under faults, through the real gateway on a real Redis that the tests take away and bring back:
tenants never share answers, any replica invalidates what another served, a failing store is counted, and a
Redis outage is served by the model (`x-cache: error`), never a 500."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
import redis

from tests.conftest import ServerProcess
from tiers.auth import hash_key

ROUTING = """features:
  faq:
    tier: 3
    value: internal
    owner: support
    failure_cost_usd: 0.1
    cache: {threshold: 0.9, ttl_s: 3600}
  hours:
    tier: 3
    value: internal
    owner: support
    failure_cost_usd: 0.1
    cache: {threshold: 0.9, ttl_s: 3600, shared: true}
"""
PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1}
"""
TENANT_A, TENANT_B, ADMIN = "sk-tenant-a-0123456789abcdef", "sk-tenant-b-0123456789abcdef", "sk-admin-0123456789abcd"
KEYS = f"""admin_sha256: {hash_key(ADMIN)}
keys:
  - {{id: tenant-a, sha256: {hash_key(TENANT_A)}, features: ["*"]}}
  - {{id: tenant-b, sha256: {hash_key(TENANT_B)}, features: ["*"]}}
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-faults")
    for name, text in (("routing.yaml", ROUTING), ("profile.yaml", PROFILE), ("keys.yaml", KEYS)):
        (root / name).write_text(text)
    return root


def gateway(root, redis_server, name: str) -> ServerProcess:
    proc = ServerProcess("--routing", str(root / "routing.yaml"), "--profile", str(root / "profile.yaml"),
                         "--keys", str(root / "keys.yaml"), "--cache-backend", "redis", "--redis-url",
                         redis_server.url, log_path=root / f"{name}.log")
    proc.wait_ready()
    return proc


@pytest.fixture(scope="module")
def replica_a(root, redis_server):
    proc = gateway(root, redis_server, "a")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def replica_b(root, redis_server, replica_a):
    proc = gateway(root, redis_server, "b")
    yield proc
    proc.stop()


def chat(server, text: str, key: str = TENANT_A, feature: str = "faq", **extra) -> httpx.Response:
    body = {"model": f"feature:{feature}", "messages": [{"role": "user", "content": text}], "temperature": 0,
            "max_tokens": 16, **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"authorization": f"Bearer {key}"})


def until(condition, timeout: float = 10.0):
    """The answer is stored just after the response is sent: wait for what that changes."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def metric(server, name: str, **labels) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    found = re.search(rf"^{name}{{{wanted}}} ([0-9.e+]+)$", text, re.M)
    return float(found[1]) if found else 0.0


def cache_state(server) -> dict:
    return httpx.get(f"{server.base_url}/ready").json()["cache"]


def test_a_tenant_never_gets_another_tenants_cached_answer(replica_a):
    """docs/cache.md: with client keys, answers are cached per key unless the feature sets `cache.shared`."""
    first = chat(replica_a, "What is my account balance?")
    assert first.headers["x-cache"] == "miss"
    assert until(lambda: chat(replica_a, "What is my account balance?").headers["x-cache"] == "hit")
    assert chat(replica_a, "What is my account balance?", key=TENANT_B).headers["x-cache"] == "miss"
    chat(replica_a, "When do you open?", feature="hours")
    assert until(lambda: chat(replica_a, "When do you open?", key=TENANT_B, feature="hours").headers["x-cache"]
                 == "hit")


def test_any_replica_invalidates_an_answer_another_replica_served(replica_a, replica_b):
    """docs/cache.md: `DELETE /admin/cache/<request_id>` takes the id of any request the answer was served to."""
    chat(replica_a, "How do I reset my password?")
    served = until(lambda: (r := chat(replica_b, "How can I reset my password?")).headers["x-cache"] == "hit" and r)
    assert served, "replica b never served replica a's answer from the shared Redis"
    deleted = httpx.delete(f"{replica_a.base_url}/admin/cache/{served.headers['x-request-id']}",
                           headers={"authorization": f"Bearer {ADMIN}"})
    assert deleted.status_code == 200, deleted.text
    assert chat(replica_b, "How do I reset my password?").headers["x-cache"] == "miss"


def test_a_store_that_fails_in_the_background_is_counted_and_shown(replica_a, redis_server):
    """A Redis that refuses writes (out of memory) fails the store after the response: counted, never silent."""
    client = redis.Redis.from_url(redis_server.url)
    before = metric(replica_a, "tier_cache_errors_total", op="store")
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    try:
        response = chat(replica_a, "Where is my parcel?")
        assert response.status_code == 200 and response.headers["x-cache"] == "miss"
        assert until(lambda: metric(replica_a, "tier_cache_errors_total", op="store") > before)
        assert cache_state(replica_a)["state"] == "degraded"
    finally:
        client.config_set("maxmemory", 0)
    assert chat(replica_a, "Where is my parcel?").headers["x-cache"] == "miss"  # nothing was stored
    assert until(lambda: chat(replica_a, "Where is my parcel?").headers["x-cache"] == "hit")
    assert cache_state(replica_a)["state"] == "ok"


def test_a_redis_outage_is_served_by_the_model_and_shows_on_ready_and_metrics(replica_a, redis_server):
    """docs/cache.md: a cache backend that fails degrades to no cache: `x-cache: error`, never a 500."""
    chat(replica_a, "Cancel my subscription please")
    assert until(lambda: chat(replica_a, "Cancel my subscription please").headers["x-cache"] == "hit")
    redis_server.stop()
    try:
        down = chat(replica_a, "Cancel my subscription please")
        assert down.status_code == 200, down.text
        assert down.headers["x-cache"] == "error" and down.json()["choices"][0]["message"]["content"]
        body = {"model": "feature:faq", "messages": [{"role": "user", "content": "Cancel my subscription please"}],
                "temperature": 0, "max_tokens": 16, "stream": True}
        with httpx.stream("POST", f"{replica_a.base_url}/v1/chat/completions", json=body, timeout=60,
                          headers={"authorization": f"Bearer {TENANT_A}"}) as stream:
            assert stream.status_code == 200 and stream.headers["x-cache"] == "error"
            events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and all("error" not in json.loads(e) for e in events[:-1])
        ready = httpx.get(f"{replica_a.base_url}/ready")
        assert ready.status_code == 200 and ready.json()["cache"]["state"] == "degraded"
        assert metric(replica_a, "tier_cache_state", state="degraded") == 1
        assert metric(replica_a, "tier_cache_errors_total", op="lookup") >= 2
        admin = {"authorization": f"Bearer {ADMIN}"}
        cleared = httpx.delete(f"{replica_a.base_url}/admin/cache", params={"feature": "faq"}, headers=admin)
        assert cleared.status_code == 503 and cleared.json()["error"]["code"] == "cache_unavailable"
        feedback = httpx.post(f"{replica_a.base_url}/v1/feedback", headers={"authorization": f"Bearer {TENANT_A}"},
                              json={"request_id": down.headers["x-request-id"], "outcome": "corrected"})
        assert feedback.status_code == 200 and feedback.json()["cache_entry_removed"] is False
    finally:
        redis_server.start()  # an empty Redis on the same port: the cache works again
    assert chat(replica_a, "Cancel my subscription please").headers["x-cache"] == "miss"
    assert until(lambda: chat(replica_a, "Cancel my subscription please").headers["x-cache"] == "hit")
    assert cache_state(replica_a)["state"] == "ok"
