"""Value-weighted routing with real models: gates escalate, tiers never silently downgrade, reload is live.

The stronger tier is a real OpenAI-protocol server: a second gateway process serving
Qwen2.5-Coder-0.5B, reached by the hosted runner exactly as it would reach a frontier API.
"""

from __future__ import annotations

import json
import time

import httpx
import jsonschema
import pytest

from tests.conftest import ServerProcess, free_port

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"]}
EXTRACT = [{"role": "user", "content": "Extract the person as a JSON object with keys name and age: "
                                       "Ada Lovelace, 36 years old."}]
KEY_ENV = "STRONG_TIER_TEST_KEY"
SECRET_KEY = "sk-test-cascade-secret-4471"


def routing_yaml() -> str:
    return f"""
features:
  field-extraction:
    tier: 2
    value: revenue
    owner: ops
    failure_cost_usd: 20
    gate: {{json_schema: {json.dumps(PERSON)}}}
    escalate_to: 1
  contract-review: {{tier: 1, value: risk, owner: legal, failure_cost_usd: 500}}
  contract-review-degradable: {{tier: 1, value: risk, owner: legal, failure_cost_usd: 500, fallback: [3]}}
  ticket-triage: {{tier: 3, value: retention, owner: support, failure_cost_usd: 1}}
"""


def profile_yaml(tier1_url: str) -> str:
    return f"""
devices: {{cpu: {{kind: cpu}}}}
tiers:
  3: {{runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 4}}
  2: {{runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 4}}
  1: {{runner: hosted, model: "tier:3", base_url: "{tier1_url}", api_key_env: {KEY_ENV}, read_timeout_s: 120}}
"""


def start_gateway(root, tier1_url: str) -> tuple[ServerProcess, object]:
    routing = root / "routing.yaml"
    routing.write_text(routing_yaml())
    profile = root / "profile.yaml"
    profile.write_text(profile_yaml(tier1_url))
    proc = ServerProcess("--profile", str(profile), "--routing", str(routing), env={KEY_ENV: SECRET_KEY},
                         log_path=root / "gateway.log")
    proc.wait_ready()
    return proc, routing


@pytest.fixture(scope="module")
def gateway(strong, tmp_path_factory):
    proc, routing = start_gateway(tmp_path_factory.mktemp("gateway"), f"{strong.base_url}/v1")
    proc.routing = routing
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def gateway_with_tier1_down(tmp_path_factory):
    proc, _ = start_gateway(tmp_path_factory.mktemp("down"), f"http://127.0.0.1:{free_port()}/v1")
    try:
        yield proc
    finally:
        proc.stop()


def chat(server, model: str, messages=EXTRACT, **extra) -> httpx.Response:
    body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": 60, **extra}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=180)


def test_gate_failure_on_tier2_escalates_to_the_stronger_tier(gateway):
    response = chat(gateway, "feature:field-extraction")
    assert response.status_code == 200, response.text
    assert response.headers["x-escalated"] == "true"
    assert response.headers["x-gate"].startswith("json_schema:")
    assert response.headers["x-tier"] == "1"
    primary, escalation = response.headers["x-attempts"].split(",")
    assert primary.startswith("primary:tier2:smollm2-135m-instruct-q4_1:json_schema:")
    assert escalation == "escalation:tier1:tier:3:json_schema:ok"
    value = json.loads(response.json()["choices"][0]["message"]["content"])
    jsonschema.validate(value, PERSON)
    assert value["age"] == 36


def test_gated_streaming_is_buffered_and_checked_first(gateway):
    body = {"model": "feature:field-extraction", "messages": EXTRACT, "temperature": 0, "max_tokens": 60,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=180) as response:
        assert response.headers["x-escalated"] == "true"
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    jsonschema.validate(json.loads(text), PERSON)
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_passing_answer_is_not_escalated(gateway):
    schema_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    response = chat(gateway, "feature:field-extraction", response_format=schema_format)
    assert response.status_code == 200
    assert response.headers["x-escalated"] == "false"
    assert response.headers["x-tier"] == "2"
    assert response.headers["x-gate"] == "json_schema:ok"


def test_tier1_feature_is_served_by_tier1(gateway):
    response = chat(gateway, "feature:contract-review", messages=[{"role": "user", "content": "Say OK."}])
    assert response.status_code == 200
    assert (response.headers["x-tier"], response.headers["x-downgraded"]) == ("1", "false")


def test_tier1_down_is_503_never_a_cheaper_answer(gateway_with_tier1_down):
    response = chat(gateway_with_tier1_down, "feature:contract-review")
    assert response.status_code == 503
    error = response.json()["error"]
    assert "tier 1" in error["message"] and "unreachable" in error["message"]
    assert SECRET_KEY not in response.text
    assert SECRET_KEY not in gateway_with_tier1_down.output()


def test_explicit_fallback_is_marked_downgraded(gateway_with_tier1_down):
    response = chat(gateway_with_tier1_down, "feature:contract-review-degradable",
                    messages=[{"role": "user", "content": "Say OK."}])
    assert response.status_code == 200
    assert (response.headers["x-tier"], response.headers["x-downgraded"]) == ("3", "true")


def test_gate_failure_with_tier1_down_is_503_not_the_unverified_answer(gateway_with_tier1_down):
    response = chat(gateway_with_tier1_down, "feature:field-extraction")
    assert response.status_code == 503
    assert "failed its gate on tier 2" in response.json()["error"]["message"]


def test_reload_rejects_a_broken_table_and_applies_a_good_one(gateway):
    routing = gateway.routing
    original = routing.read_text()
    try:
        routing.write_text(original.replace("tier: 3, value: retention", "tier: 9, value: retention"))
        rejected = httpx.post(f"{gateway.base_url}/admin/reload")
        assert rejected.status_code == 400
        assert "features.ticket-triage.tier" in rejected.json()["error"]["message"]
        still = chat(gateway, "feature:ticket-triage", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert still.headers["x-tier"] == "3"

        routing.write_text(original.replace("tier: 3, value: retention", "tier: 2, value: retention"))
        applied = httpx.post(f"{gateway.base_url}/admin/reload")
        assert applied.status_code == 200 and "ticket-triage" in applied.json()["features"]
        moved = chat(gateway, "feature:ticket-triage", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert moved.headers["x-tier"] == "2"
    finally:
        routing.write_text(original)
        httpx.post(f"{gateway.base_url}/admin/reload")


def test_file_watcher_reloads_without_a_request(gateway):
    routing = gateway.routing
    original = routing.read_text()
    try:
        routing.write_text(original + "  brand-new: {tier: 3, value: internal, owner: x, failure_cost_usd: 0}\n")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ids = [m["id"] for m in httpx.get(f"{gateway.base_url}/v1/models").json()["data"]]
            if "feature:brand-new" in ids:
                break
            time.sleep(0.2)
        assert "feature:brand-new" in ids
    finally:
        routing.write_text(original)
        httpx.post(f"{gateway.base_url}/admin/reload")
