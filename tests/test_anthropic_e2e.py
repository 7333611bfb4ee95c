"""Tier 1 on the Anthropic Messages protocol, end to end against a real Anthropic-protocol server.

The chain: openai SDK -> our gateway (Tier 1 `provider: anthropic`) -> LiteLLM's proxy (POST /v1/messages)
-> the session's gateway serving SmolLM2 on Tier 3. Tier 2 of the gateway under test is the same
Anthropic upstream behind the fault-injecting proxy, for the faults that only the Messages protocol has.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.fault_proxy import Fault, FaultProxy
from tests.litellm_proxy import MODEL, LiteLLMProxy, require_litellm
from tests.openai_schema import validate

KEY_ENV = "ANTHROPIC_TIER1_KEY"
MASTER_KEY = "sk-litellm-planted-secret-7733"
# A gate SmolLM2 cannot pass (nothing in the prompt gives a passport number), so it always escalates.
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age", "passport_number"]}
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]

require_litellm()


@pytest.fixture(scope="module")
def litellm(server, tmp_path_factory):
    proxy = LiteLLMProxy(f"{server.base_url}/v1", MASTER_KEY, tmp_path_factory.mktemp("litellm"))
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def faults(litellm):
    proxy = FaultProxy(litellm.base_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def gateway(litellm, faults, server, tmp_path_factory):
    root = tmp_path_factory.mktemp("anthropic")
    common = f'provider: anthropic, model: {MODEL}, api_key_env: {KEY_ENV}, default_max_tokens: 64'
    (root / "profile.yaml").write_text(f"""
tiers:
  1: {{runner: hosted, {common}, base_url: "{litellm.base_url}"}}
  2: {{runner: hosted, {common}, base_url: "{faults.base_url}", retry_base_s: 0.05, first_byte_timeout_s: 30}}
  3: {{runner: hosted, model: "tier:3", base_url: "{server.base_url}/v1", api_key_env: null}}
""")
    (root / "routing.yaml").write_text(f"""
features:
  field-extraction:
    {{tier: 3, value: revenue, owner: ops, failure_cost_usd: 20, escalate_to: 1, gate: {{json_schema: {json.dumps(PERSON)}}}}}
  sure-answer:
    {{tier: 3, value: revenue, owner: ops, failure_cost_usd: 20, escalate_to: 1,
      gate: {{confidence: {{min_mean_logprob: -0.000001}}}}}}
""")
    proc = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                         env={KEY_ENV: MASTER_KEY}, log_path=root / "gateway.log")
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()
        assert MASTER_KEY not in proc.log_path.read_text()


@pytest.fixture(scope="module")
def client(gateway):
    from openai import OpenAI

    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key="unused-on-loopback", max_retries=0)


def stream(gateway, model: str = "tier:1", **extra) -> list[str]:
    body = {"model": model, "messages": QUESTION, "temperature": 0, "max_tokens": 16, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["x-tier"] == model.removeprefix("tier:")
        return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_non_streaming_answer_usage_and_finish_reason(client):
    raw = client.chat.completions.with_raw_response.create(model="tier:1", messages=QUESTION, temperature=0,
                                                           max_tokens=16)
    assert raw.headers["x-tier"] == "1" and raw.headers["x-model"] == MODEL
    validate(json.loads(raw.text), "CreateChatCompletionResponse")
    completion = raw.parse()
    assert "Paris" in completion.choices[0].message.content
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert completion.usage.prompt_tokens > 10
    assert 0 < completion.usage.completion_tokens <= 16
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_max_tokens_is_finish_reason_length(client):
    completion = client.chat.completions.create(model="tier:1", messages=QUESTION, temperature=0, max_tokens=3)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3


def test_stop_sequence_and_system_prompt_reach_the_model(client):
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = client.chat.completions.create(model="tier:1", messages=messages, temperature=0, max_tokens=40)
    text = full.choices[0].message.content
    assert "4" in text, text
    stopped = client.chat.completions.create(model="tier:1", messages=messages, temperature=0, max_tokens=40,
                                             stop=["4"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text.split("4")[0]
    assert stopped.usage.completion_tokens < full.usage.completion_tokens


def test_streaming_matches_the_whole_answer(client, gateway):
    whole = client.chat.completions.create(model="tier:1", messages=QUESTION, temperature=0, max_tokens=16)
    events = stream(gateway)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole.choices[0].message.content
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1]["choices"] == []
    usage = dict(chunks[-1]["usage"])
    assert usage.pop("cost_usd") == 0.0  # the stream's cost rides on its usage chunk (this tier is unpriced)
    assert usage == whole.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"})


def test_streaming_without_include_usage_sends_no_usage(gateway):
    events = stream(gateway, stream_options={"include_usage": False})
    assert events[-1] == "[DONE]"
    assert all(json.loads(e).get("usage") is None for e in events[:-1])


@pytest.mark.parametrize("extra, param", [({"logprobs": True}, "logprobs"), ({"presence_penalty": 0.5}, "presence_penalty"),
                                          ({"response_format": {"type": "json_schema",
                                                                "json_schema": {"name": "x", "schema": {}}}},
                                           "response_format")])
def test_parameters_anthropic_cannot_honour_are_a_400_naming_them(gateway, extra, param):
    body = {"model": "tier:1", "messages": QUESTION, **extra}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param and param in response.json()["error"]["message"]


def test_overloaded_529_is_retried(gateway, faults):
    faults.plan[:] = [Fault.status(529)]
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", timeout=60,
                          json={"model": "tier:2", "messages": QUESTION, "temperature": 0, "max_tokens": 16})
    assert response.status_code == 200, response.text
    assert "Paris" in response.json()["choices"][0]["message"]["content"]
    assert [s.fault for s in faults.seen[-2:]] == ["status", "pass"]
    assert faults.seen[-1].headers["x-api-key"] == MASTER_KEY
    assert faults.seen[-1].headers["anthropic-version"] == "2023-06-01"


def test_a_cut_messages_stream_ends_with_an_error_event(gateway, faults):
    faults.plan[:] = [Fault.cut(after_lines=4)]
    events = stream(gateway, model="tier:2")
    assert events[-1] != "[DONE]"
    error = json.loads(events[-1])["error"]
    assert "tier 2" in error["message"] and "mid-stream" in error["message"]
    assert MASTER_KEY not in "".join(events)


def test_a_gate_escalation_to_anthropic_asks_without_json_schema_and_the_gate_still_checks(gateway):
    body = {"model": "feature:field-extraction", "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": "Extract the person as JSON with keys name and age: Ada, 36."}]}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text  # not a 400 for json_schema: the escalation did not ask for it
    primary, escalation = response.headers["x-attempts"].split(",")
    assert primary.startswith("primary:tier3:tier:3:json_schema:") and not primary.endswith(":ok")
    assert escalation.startswith(f"escalation:tier1:{MODEL}:json_schema:")
    assert response.headers["x-tier"] == "1" and response.headers["x-escalated"] == "true"


def test_a_confidence_gate_escalates_to_anthropic_without_asking_it_for_logprobs(client, gateway):
    """Tier 3 returns logprobs and fails the (unpassable) gate; Tier 1 on Anthropic has no logprobs, so the
    escalation must not ask for them (a 400 for a parameter the client never sent) nor fail on their absence."""
    raw = client.chat.completions.with_raw_response.create(model="feature:sure-answer", messages=QUESTION,
                                                           temperature=0, max_tokens=8)
    assert raw.headers["x-escalated"] == "true" and raw.headers["x-tier"] == "1"
    assert raw.headers["x-gate"].startswith("confidence:mean_logprob_")  # why it escalated: Tier 3's verdict
    attempts = raw.headers["x-attempts"].split(",")
    assert attempts[-1].startswith("escalation:tier1:") and attempts[-1].endswith("unchecked_no_logprobs")
    assert raw.parse().choices[0].logprobs is None  # the client did not ask for them
