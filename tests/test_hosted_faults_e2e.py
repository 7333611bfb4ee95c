"""Tier 1 resilience against a real upstream behind a real fault-injecting proxy.

Upstream: the session's gateway serving SmolLM2 on Tier 3 (OpenAI protocol). The gateway under test
reaches it as a hosted Tier 1 through `FaultProxy`, which answers 429/500, stalls or cuts the stream
when told to. Its Tier 3 is the same upstream without the proxy, for the fallback test.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.fault_proxy import Fault, FaultProxy

KEY_ENV = "FAULT_TIER1_KEY"
SECRET_KEY = "sk-planted-fault-secret-90210"
FIRST_BYTE_S = 1.5
COOLDOWN_S = 2.0
READ_S, TOTAL_S = 1.0, 3.0  # Tier 2: the same upstream through the proxy, with short mid-stream timeouts

ROUTING = """
features:
  contract-review: {tier: 1, value: risk, owner: legal, failure_cost_usd: 500}
  contract-review-degradable: {tier: 1, value: risk, owner: legal, failure_cost_usd: 500, fallback: [3]}
  contract-review-short-fuse: {tier: 2, value: risk, owner: legal, failure_cost_usd: 500}
"""


def profile_yaml(proxy_url: str, upstream_url: str) -> str:
    return f"""
tiers:
  1: {{runner: hosted, model: "tier:3", base_url: "{proxy_url}/v1", api_key_env: {KEY_ENV},
       max_attempts: 3, retry_base_s: 0.05, retry_max_backoff_s: 0.2, retry_budget_s: 10,
       first_byte_timeout_s: {FIRST_BYTE_S}, total_timeout_s: 60,
       circuit_failure_threshold: 3, circuit_cooldown_s: {COOLDOWN_S}}}
  2: {{runner: hosted, model: "tier:3", base_url: "{proxy_url}/v1", api_key_env: null, max_attempts: 1,
       first_byte_timeout_s: {FIRST_BYTE_S}, read_timeout_s: {READ_S}, total_timeout_s: {TOTAL_S}}}
  3: {{runner: hosted, model: "tier:3", base_url: "{upstream_url}/v1", api_key_env: null}}
"""


@pytest.fixture(scope="module")
def proxy(server):
    proxy = FaultProxy(server.base_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def gateway(proxy, server, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    (root / "routing.yaml").write_text(ROUTING)
    (root / "profile.yaml").write_text(profile_yaml(proxy.base_url, server.base_url))
    proc = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                         env={KEY_ENV: SECRET_KEY}, log_path=root / "gateway.log")
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()
        assert SECRET_KEY not in proc.log_path.read_text()


@pytest.fixture(autouse=True)
def clean_slate(proxy, gateway):
    """Each test starts with no planned faults and a closed circuit."""
    proxy.plan.clear()
    yield
    proxy.plan.clear()
    deadline = time.monotonic() + COOLDOWN_S + 5
    while tier1(gateway)["detail"] and time.monotonic() < deadline:
        if tier1(gateway)["state"] == "ready":  # half-open: one passing request closes it
            chat(gateway, max_tokens=1)
        time.sleep(0.1)


def tier1(gateway) -> dict:
    return httpx.get(f"{gateway.base_url}/ready", timeout=5).json()["tiers"]["1"]


def chat(gateway, model: str = "feature:contract-review", **extra) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France? One word."}],
            "temperature": 0, "max_tokens": 8, **extra}
    return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60)


def stream_events(gateway, **extra) -> list[str]:
    body = {"model": "feature:contract-review", "messages": [{"role": "user", "content": "Count from 1 to 9."}],
            "temperature": 0, "max_tokens": 24, "stream": True, "stream_options": {"include_usage": True}, **extra}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_transient_500s_are_retried_and_succeed(gateway, proxy):
    proxy.plan[:] = [Fault.status(500), Fault.status(502)]
    response = chat(gateway)
    assert response.status_code == 200, response.text
    assert response.headers["x-tier"] == "1"
    assert "Paris" in response.json()["choices"][0]["message"]["content"]
    assert [s.fault for s in proxy.seen[-3:]] == ["status", "status", "pass"]


def test_429_retry_after_is_honoured(gateway, proxy):
    proxy.plan[:] = [Fault.status(429, retry_after=1)]
    before = len(proxy.seen)
    response = chat(gateway)
    assert response.status_code == 200, response.text
    first, second = proxy.arrivals()[before:before + 2]
    assert second - first >= 1.0  # the backoff alone would have waited under 0.2 s


def test_retry_after_past_the_budget_gives_up_at_once(gateway, proxy):
    proxy.plan[:] = [Fault.status(429, retry_after=30)]
    before, started = len(proxy.seen), time.monotonic()
    response = chat(gateway)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "tier 1" in message and "HTTP 429" in message and "after 1 attempt" in message
    assert time.monotonic() - started < 5
    assert len(proxy.seen) == before + 1


def test_a_stall_hits_the_first_byte_timeout_then_the_retry_answers(gateway, proxy):
    proxy.plan[:] = [Fault.stall(10)]
    started = time.monotonic()
    response = chat(gateway)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert FIRST_BYTE_S <= elapsed < FIRST_BYTE_S + 8
    assert "first_byte_timeout_s" in gateway.output()


def test_streaming_retries_before_the_first_byte(gateway, proxy):
    proxy.plan[:] = [Fault.status(503)]
    events = stream_events(gateway)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_a_cut_stream_ends_with_a_clean_error_event(gateway, proxy):
    proxy.plan[:] = [Fault.cut(after_lines=3)]
    events = stream_events(gateway)
    assert events[-1] != "[DONE]"
    error = json.loads(events[-1])["error"]
    assert "tier 1" in error["message"] and "mid-stream" in error["message"]
    assert error["code"] == "runner_failed"
    assert any(json.loads(e).get("choices") for e in events[:-1])  # some text arrived before the cut
    assert chat(gateway).status_code == 200  # and the gateway keeps serving


def test_an_upstream_silent_mid_stream_past_read_timeout_says_so(gateway, proxy):
    proxy.plan[:] = [Fault.hang(after_lines=2, seconds=3 * READ_S)]
    events = stream_events(gateway, model="feature:contract-review-short-fuse")
    assert any(json.loads(e).get("choices") for e in events[:-1])  # the first events arrived before the silence
    error = json.loads(events[-1])["error"]
    assert error["code"] == "runner_failed"
    assert "tier 2" in error["message"] and f"no data for read_timeout_s={READ_S}" in error["message"], error
    assert chat(gateway).status_code == 200  # and the gateway keeps serving


def test_a_stream_running_past_total_timeout_is_cut_with_a_clean_error_event(gateway, proxy):
    proxy.plan[:] = [Fault.drip(seconds=READ_S / 2)]  # never silent for read_timeout_s, but 24 tokens take 12 s
    events = stream_events(gateway, model="feature:contract-review-short-fuse")
    assert any(json.loads(e).get("choices") for e in events[:-1])
    error = json.loads(events[-1])["error"]
    assert error["code"] == "runner_failed"
    assert "tier 2" in error["message"] and f"ran past total_timeout_s={TOTAL_S}" in error["message"], error


def test_repeated_failures_open_the_circuit_and_a_probe_closes_it(gateway, proxy):
    proxy.plan[:] = [Fault.status(500)] * 3
    failed = chat(gateway)
    assert failed.status_code == 503
    assert "circuit open" in failed.json()["error"]["message"]

    ready = httpx.get(f"{gateway.base_url}/ready")
    assert ready.status_code == 503
    state = ready.json()["tiers"]["1"]
    assert state["state"] == "failed" and "circuit open after 3 consecutive failures" in state["detail"]

    seen = len(proxy.seen)
    refused = chat(gateway)
    assert refused.status_code == 503
    assert "tier 1" in refused.json()["error"]["message"] and "circuit open" in refused.json()["error"]["message"]
    assert len(proxy.seen) == seen  # an open circuit does not touch the upstream

    degraded = chat(gateway, model="feature:contract-review-degradable")
    assert degraded.status_code == 200
    assert (degraded.headers["x-tier"], degraded.headers["x-downgraded"]) == ("3", "true")

    time.sleep(COOLDOWN_S)
    half_open = tier1(gateway)
    assert half_open["state"] == "ready" and "half-open" in half_open["detail"]
    probe = chat(gateway)
    assert probe.status_code == 200 and probe.headers["x-tier"] == "1"
    assert tier1(gateway) == {**half_open, "detail": ""}
    assert httpx.get(f"{gateway.base_url}/ready").status_code == 200


def test_a_failed_probe_reopens_the_circuit(gateway, proxy):
    proxy.plan[:] = [Fault.status(500)] * 4
    before = len(proxy.seen)
    first = chat(gateway)
    assert first.status_code == 503
    time.sleep(COOLDOWN_S)
    probe = chat(gateway)
    assert probe.status_code == 503, ([(round(s.at, 2), s.fault) for s in proxy.seen[before:]], first.text,
                                      gateway.output()[-3000:])
    assert "after 1 attempt" in probe.json()["error"]["message"]  # a probe is not retried
    assert tier1(gateway)["state"] == "failed"


def test_the_api_key_is_sent_but_never_shown(gateway, proxy):
    proxy.plan[:] = [Fault.echo_key()]
    response = chat(gateway)
    assert proxy.seen[-1].headers["authorization"] == f"Bearer {SECRET_KEY}"
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "[redacted]" in message and KEY_ENV in message
    assert SECRET_KEY not in response.text
    assert SECRET_KEY not in httpx.get(f"{gateway.base_url}/ready").text
    assert SECRET_KEY not in gateway.output()


def test_a_stream_whose_tier_fails_before_the_first_byte_gets_the_declared_fallback(gateway, proxy):
    proxy.plan[:] = [Fault.status(500)] * 3  # every attempt fails: tier 1 is unavailable for this request
    body = {"model": "feature:contract-review-degradable", "messages": [{"role": "user", "content": "Say hi."}],
            "temperature": 0, "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert (response.headers["x-tier"], response.headers["x-downgraded"]) == ("3", "true")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and any(json.loads(e)["choices"] for e in events[:-1])
    refused = httpx.post(f"{gateway.base_url}/v1/chat/completions", timeout=60,
                         json={**body, "model": "feature:contract-review"})
    assert refused.status_code == 503  # no fallback declared: never a cheaper tier


def test_an_empty_upstream_stream_is_a_clean_error_not_a_500(gateway, proxy):
    proxy.plan[:] = [Fault.empty_stream()]
    body = {"model": "feature:contract-review", "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 8, "stream": True}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 502, response.text
    error = response.json()["error"]
    assert error["code"] == "runner_failed" and "before the first event" in error["message"]
    assert chat(gateway).status_code == 200
