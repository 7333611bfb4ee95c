"""Tools on Tier 1 and the tool cascade, with real servers: the hosted runner reaches Qwen2.5-Coder-0.5B (the
session's tool gateway) over the OpenAI protocol as Tier 1, and through LiteLLM's proxy over the Anthropic
Messages protocol as Tier 2 (LiteLLM turns Anthropic tools back into OpenAI tools upstream). Tier 3 is SmolLM2,
whose call the tool_call gate rejects, so the feature escalates and both attempts are in the ledger."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.conftest import ServerProcess
from tests.litellm_proxy import LITELLM, MODEL, LiteLLMProxy
from tests.test_tools_tier3_e2e import ASK, CLOCK, WEATHER, WEATHER_SCHEMA, assemble, chat, ledger, only_call, stream

KEY_ENV, MASTER_KEY = "TOOL_TIER1_KEY", "sk-tool-tier1-secret-5521"


@pytest.fixture(scope="module")
def litellm(tool_gateway, tmp_path_factory):
    if not LITELLM.exists():
        pytest.skip("LiteLLM is not installed: run `make litellm-setup`")
    proxy = LiteLLMProxy(f"{tool_gateway.base_url}/v1", MASTER_KEY, tmp_path_factory.mktemp("litellm-tools"))
    try:
        proxy.wait_ready()
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="module")
def cascade(tool_gateway, litellm, tmp_path_factory):
    root = tmp_path_factory.mktemp("tool-cascade")
    (root / "profile.yaml").write_text(f"""
devices: {{cpu: {{kind: cpu}}}}
tiers:
  3: {{runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 2}}
  2: {{runner: hosted, provider: anthropic, model: {MODEL}, base_url: "{litellm.base_url}", api_key_env: {KEY_ENV},
      default_max_tokens: 80, read_timeout_s: 300}}
  1: {{runner: hosted, model: "tier:3", base_url: "{tool_gateway.base_url}/v1", api_key_env: {KEY_ENV},
      read_timeout_s: 300}}
""")
    (root / "routing.yaml").write_text("""
features:
  crm-agent: {tier: 3, value: revenue, owner: sales, failure_cost_usd: 50}
""")
    proc = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                         env={KEY_ENV: MASTER_KEY}, log_path=root / "gateway.log")
    try:
        proc.wait_ready(timeout=120)
        yield proc
    finally:
        proc.stop()
        assert MASTER_KEY not in proc.log_path.read_text()


@pytest.mark.parametrize("tier", ["tier:1", "tier:2"])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_hosted_tiers_pass_tool_choice_through_and_return_valid_calls(cascade, tier, choice):
    call = only_call(chat(cascade, tier, tool_choice=choice))
    assert call["name"] == "get_weather"
    jsonschema.validate(json.loads(call["arguments"]), WEATHER_SCHEMA)


@pytest.mark.parametrize("tier", ["tier:1", "tier:2"])
def test_hosted_tiers_stream_calls_as_openai_fragments(cascade, tier):
    (choice,) = assemble(stream(cascade, tier, tool_choice="required")).values()
    assert choice["finish"] == "tool_calls" and choice["calls"][0]["name"] == "get_weather"
    assert choice["calls"][0]["id"]
    jsonschema.validate(json.loads(choice["calls"][0]["arguments"]), WEATHER_SCHEMA)


@pytest.mark.parametrize("tier", ["tier:1", "tier:2"])
def test_hosted_tiers_take_a_call_and_its_result_back(cascade, tier):
    """The round trip's second leg: the assistant's call and the tool result reach the upstream in its protocol
    (tool_use/tool_result blocks through LiteLLM) and an answer comes back."""
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 degrees Celsius"}]
    response = chat(cascade, tier, messages=messages, tools=[WEATHER, CLOCK])
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] or choice["message"].get("tool_calls")


def test_anthropic_tier_refuses_n_above_one_by_name(cascade):
    response = chat(cascade, "tier:2", tool_choice="required", n=2)
    assert response.status_code == 400 and response.json()["error"]["param"] == "n"


def cut_short(**extra) -> dict:
    """SmolLM2 allowed parallel calls repeats its call until max_tokens cuts the second one short."""
    return {"tool_choice": "required", "parallel_tool_calls": True, "max_tokens": 70, **extra}


def test_an_invalid_tier3_call_escalates_and_returns_a_valid_one(cascade):
    response = chat(cascade, "feature:crm-agent", **cut_short())
    assert response.status_code == 200, response.text
    assert response.headers["x-escalated"] == "true" and response.headers["x-tier"] == "1"
    primary, escalation = response.headers["x-attempts"].split(",")
    # SmolLM2's cut-short call may name either offered tool: which one differs between CPUs (AMD and Intel here)
    named = f"@{WEATHER['function']['name']}", f"@{CLOCK['function']['name']}"
    assert primary.startswith(tuple(f"primary:tier3:smollm2-135m-instruct-q4_1:tool_call:invalid_json{n}"
                                    for n in named)), primary
    assert escalation == "escalation:tier1:tier:3:tool_call:ok"
    for call in response.json()["choices"][0]["message"]["tool_calls"]:
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_SCHEMA)
    rows = ledger(cascade, response.headers["x-request-id"])
    assert [(r[1], r[2], r[4], r[5]) for r in rows] == [("tool_call", 0, 3, 0), ("tool_call", 1, 1, 1)]
    assert rows[0][3].startswith(tuple(f"invalid_json{n}" for n in named)) and rows[0][0] >= 2 and rows[1][0] >= 1


def test_a_streamed_tool_feature_is_checked_before_its_first_byte(cascade):
    chunks = stream(cascade, "feature:crm-agent", **cut_short())
    (choice,) = assemble(chunks).values()
    assert choice["finish"] == "tool_calls"
    for call in choice["calls"].values():
        jsonschema.validate(json.loads(call["arguments"]), WEATHER_SCHEMA)


def test_a_valid_tier3_call_is_not_escalated(cascade):
    response = chat(cascade, "feature:crm-agent", tool_choice="required")
    assert (response.headers["x-escalated"], response.headers["x-gate"]) == ("false", "tool_call:ok")
    assert httpx.get(f"{cascade.base_url}/ready").status_code == 200
