"""The semantic cache through the real server: headers, zero-cost ledger rows, streaming hits, invalidation."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import ServerProcess
from tiers.ledger import schema

ROUTING = """features:
  faq:
    tier: 3
    value: internal
    owner: support
    failure_cost_usd: 0.1
    cache: {threshold: 0.9, ttl_s: 3600}
  uncached: {tier: 3, value: internal, owner: support, failure_cost_usd: 0.1}
  gated:
    tier: 3
    value: internal
    owner: support
    failure_cost_usd: 0.1
    gate: {regex: 'never-[0-9]{12}'}
    cache: {threshold: 0.9, ttl_s: 3600}
"""
PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, price: {input_per_m: 1, output_per_m: 1}}
"""


@pytest.fixture(scope="module", params=["memory", "redis"])
def server(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"cache-{request.param}")
    (root / "routing.yaml").write_text(ROUTING)
    (root / "profile.yaml").write_text(PROFILE)
    args = ["--routing", str(root / "routing.yaml"), "--profile", str(root / "profile.yaml")]
    if request.param == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushdb()
        args += ["--cache-backend", "redis", "--redis-url", url]
    proc = ServerProcess(*args, log_path=root / "server.log")
    proc.wait_ready()
    yield proc
    proc.stop()


def chat(server, text: str, model="feature:faq", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "temperature": 0, "max_tokens": 24,
            **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


def rows(server) -> dict[str, dict]:
    httpx.get(f"{server.base_url}/v1/audit")  # flushes the ledger
    engine = sa.create_engine(f"sqlite:///{server.data_dir / 'ledger.db'}")
    with engine.connect() as conn:
        found = {r.request_id: dict(r._mapping) for r in conn.execute(sa.select(schema.attempts))}
    engine.dispose()
    return found


def wait_for_hit(server, text: str) -> httpx.Response:
    """The answer is stored just after the first response is sent."""
    deadline = time.monotonic() + 10
    while True:
        response = chat(server, text)
        if response.headers["x-cache"] == "hit" or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_repeat_and_paraphrase_are_served_from_the_cache_at_no_cost(server):
    first = chat(server, "How do I reset my password?")
    assert first.headers["x-cache"] == "miss"
    again = wait_for_hit(server, "How do I reset my password?")
    assert again.headers["x-cache"] == "hit" and again.headers["x-cost-usd"] == "0.00000000"
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]
    assert again.json()["id"] != first.json()["id"]
    paraphrase = chat(server, "How can I reset my password?")
    assert paraphrase.headers["x-cache"] == "hit"
    assert float(paraphrase.headers["x-cache-similarity"]) >= 0.9
    unrelated = chat(server, "What is the capital of Italy?")
    assert unrelated.headers["x-cache"] == "miss"
    ledger = rows(server)
    hit_row = ledger[paraphrase.headers["x-request-id"]]
    assert hit_row["cache_hit"] and hit_row["cost_usd"] == 0 and hit_row["completion_tokens"] == 0
    assert hit_row["cache_similarity"] >= 0.9
    assert not ledger[first.headers["x-request-id"]]["cache_hit"]


def test_streaming_request_is_served_from_the_cache_as_a_stream(server):
    chat(server, "Where is my parcel?")
    wait_for_hit(server, "Where is my parcel?")
    body = {"model": "feature:faq", "messages": [{"role": "user", "content": "Where is my parcel?"}],
            "temperature": 0, "max_tokens": 24, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.headers["x-cache"] == "hit"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[0])["choices"][0]["delta"]["content"]


def test_uncached_features_and_sampling_requests_bypass_the_cache(server):
    assert chat(server, "How do I reset my password?", model="feature:uncached").headers["x-cache"] == "off"
    assert chat(server, "How do I reset my password?", temperature=0.8).headers["x-cache"] == "off"


def test_invalidation_by_request_and_by_feature(server):
    chat(server, "Cancel my subscription please")
    hit = wait_for_hit(server, "Cancel my subscription please")
    assert hit.headers["x-cache"] == "hit"
    deleted = httpx.delete(f"{server.base_url}/admin/cache/{hit.headers['x-request-id']}")
    assert deleted.status_code == 200
    assert chat(server, "Cancel my subscription please").headers["x-cache"] == "miss"
    wait_for_hit(server, "Cancel my subscription please")
    cleared = httpx.delete(f"{server.base_url}/admin/cache", params={"feature": "faq"})
    assert cleared.status_code == 200 and cleared.json()["dropped"] >= 1
    assert chat(server, "Cancel my subscription please").headers["x-cache"] == "miss"
    assert httpx.delete(f"{server.base_url}/admin/cache/req_unknown").status_code == 404
    assert httpx.delete(f"{server.base_url}/admin/cache", params={"feature": "nope"}).status_code == 404


def test_negative_feedback_removes_the_cached_answer(server):
    chat(server, "How do I change my email address?")
    hit = wait_for_hit(server, "How do I change my email address?")
    feedback = httpx.post(f"{server.base_url}/v1/feedback",
                          json={"request_id": hit.headers["x-request-id"], "outcome": "corrected"})
    assert feedback.json()["cache_entry_removed"] is True
    assert chat(server, "How do I change my email address?").headers["x-cache"] == "miss"


def test_an_answer_that_fails_its_gate_is_never_cached(server):
    """docs/cache.md: only answers that passed the feature's gate are cached. This gate fails every answer and its
    escalation tier (1) is not served, so each request is a 503, never the unverified answer from the cache."""
    for _ in range(3):
        response = chat(server, "How do I reset my password?", model="feature:gated")
        assert response.status_code == 503, response.text
        time.sleep(0.3)  # a store would land just after the response
