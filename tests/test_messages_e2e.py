"""POST /v1/messages and /v1/messages/count_tokens through the real server and SmolLM2, driven by the official
`anthropic` SDK; what we send is parsed by the SDK's own types, errors come out in Anthropic's shape."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from pydantic import TypeAdapter

from tests.conftest import ServerProcess
from tests.fault_proxy import Fault, FaultProxy
from tests.ledger_reader import ledger_rows
from tiers.auth import hash_key

ASK = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
EVENTS = TypeAdapter(RawMessageStreamEvent)
T0 = {"temperature": 0}  # the 2026 SDK has no temperature argument; older clients send it, and it is honoured


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused-on-loopback", max_retries=0)


def post(server, body, path="/v1/messages", **kwargs) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60, **kwargs)


def raw_events(base_url: str, body: dict) -> list[tuple[str, dict]]:
    with httpx.stream("POST", f"{base_url}/v1/messages", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    datas = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert len(names) == len(datas) and [d["type"] for d in datas] == names
    return list(zip(names, datas))


def test_a_message_parsed_by_the_sdk_with_usage_headers_and_a_ledger_row(client, server):
    raw = client.messages.with_raw_response.create(model="tier:3", max_tokens=16, extra_body=T0, messages=ASK,
                                                   system="You are a geography teacher.")
    assert raw.headers["x-tier"] == "3" and raw.headers["x-model"] == "smollm2-135m-instruct-q4_1"
    message = raw.parse()
    assert isinstance(message, Message) and message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "smollm2-135m-instruct-q4_1"
    assert [b.type for b in message.content] == ["text"] and "Paris" in message.content[0].text
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 10 and 0 < message.usage.output_tokens <= 16
    row = next(r for r in ledger_rows(server) if r["request_id"] == raw.headers["x-request-id"])
    assert row["api"] == "messages" and row["serving_tier"] == 3
    assert (row["prompt_tokens"], row["completion_tokens"]) == (message.usage.input_tokens, message.usage.output_tokens)


def test_max_tokens_and_stop_sequences_become_stop_reasons(client):
    cut = client.messages.create(model="tier:3", max_tokens=3, extra_body=T0, messages=ASK,
                                 cache_control={"type": "ephemeral"})  # accepted: a hint for Anthropic's own cache
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 3
    count = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    full = client.messages.create(model="tier:3", max_tokens=40, extra_body=T0, messages=count)
    stopped = client.messages.create(model="tier:3", max_tokens=40, extra_body=T0, messages=count, stop_sequences=["4"])
    assert "4" in full.content[0].text
    assert stopped.stop_reason == "end_turn"  # runners report one reason for both; docs/endpoints.md says so
    assert stopped.content[0].text == full.content[0].text.split("4")[0]


def test_output_config_format_is_structured_output(client):
    person = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    message = client.messages.create(model="tier:3", max_tokens=60, extra_body=T0, messages=[
        {"role": "user", "content": "Describe a person called Ada who is 36, as JSON."}],
        output_config={"format": {"type": "json_schema", "schema": person}})
    data = json.loads(message.content[0].text)
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)


def test_the_sdk_stream_gives_the_same_message_as_a_whole_answer(client):
    kwargs = dict(model="tier:3", max_tokens=20, extra_body=T0, messages=[{"role": "user", "content": "Name three colours."}])
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens, whole.usage.output_tokens)


def test_stream_events_come_in_anthropics_order(server):
    events = raw_events(server.base_url, {"model": "tier:3", "max_tokens": 12, "temperature": 0, "messages": ASK})
    for _, data in events:
        EVENTS.validate_python(data)
    names = [name for name, _ in events if name != "ping"]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) == {"content_block_delta"}
    assert events[0][1]["message"]["content"] == []
    assert all(d["delta"]["type"] == "text_delta" and d["index"] == 0 for n, d in events if n == "content_block_delta")
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] in ("end_turn", "max_tokens")
    assert delta["usage"]["input_tokens"] > 10 and 0 < delta["usage"]["output_tokens"] <= 12


def test_count_tokens_is_the_prompt_the_model_really_read(client):
    system = "You are terse."
    counted = client.messages.with_raw_response.count_tokens(model="tier:3", messages=ASK, system=system)
    assert counted.headers["x-token-count"] == "exact" and counted.headers["x-tier"] == "3"
    answered = client.messages.create(model="tier:3", max_tokens=2, messages=ASK, system=system)
    assert counted.parse().input_tokens == answered.usage.input_tokens
    longer = client.messages.count_tokens(model="tier:3", messages=ASK + [
        {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}], system=system)
    assert longer.input_tokens > counted.parse().input_tokens


GOOD = {"model": "tier:3", "max_tokens": 8, "messages": ASK}


@pytest.mark.parametrize(("body", "status", "kind", "fragment"), [
    ({"model": "tier:3", "messages": ASK}, 400, "invalid_request_error", "max_tokens"),
    ({**GOOD, "messages": []}, 400, "invalid_request_error", "messages"),
    ({**GOOD, "messages": [{"role": "system", "content": "x"}]}, 400, "invalid_request_error", "messages.0.role"),
    ({**GOOD, "thinking": {"type": "enabled", "budget_tokens": 1024}}, 400, "invalid_request_error", "thinking"),
    ({**GOOD, "top_k": 5}, 400, "invalid_request_error", "top_k"),
    ({**GOOD, "output_config": {"effort": "high"}}, 400, "invalid_request_error", "effort"),
    ({**GOOD, "temperature": 1.5}, 400, "invalid_request_error", "temperature"),
    ({**GOOD, "tool_choice": {"type": "tool"}}, 400, "invalid_request_error", "tool_choice"),
    ({**GOOD, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, 400, "invalid_request_error", "tools"),
    ({**GOOD, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
     400, "invalid_request_error", "messages[0].content[0]"),
    ({**GOOD, "model": "feature:no-such-feature"}, 404, "not_found_error", "no-such-feature"),
    ({**GOOD, "model": "tier:2"}, 503, "overloaded_error", "tier 2"),
])
def test_bad_input_is_an_anthropic_error_and_the_server_keeps_serving(server, client, body, status, kind, fragment):
    response = post(server, body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["type"] == "error" and set(payload["error"]) == {"type", "message"}
    assert payload["error"]["type"] == kind and fragment in payload["error"]["message"]
    assert client.messages.create(**GOOD).content


def test_sdk_raises_its_own_error_types(client):
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="feature:nope", max_tokens=4, messages=ASK)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="tier:3", messages=[])


def test_malformed_oversized_and_unrouted_bodies_are_anthropic_shaped(server):
    broken = httpx.post(f"{server.base_url}/v1/messages", content=b"{not json", timeout=30,
                        headers={"content-type": "application/json"})
    too_big = post(server, {**GOOD, "messages": [{"role": "user", "content": "x" * 70000}]})
    unrouted = post(server, GOOD, path="/v1/messages/batches")
    for response, status, kind in ((broken, 400, "invalid_request_error"), (too_big, 413, "request_too_large"),
                                   (unrouted, 404, "not_found_error")):
        assert response.status_code == status and response.json()["error"]["type"] == kind, response.text
        assert response.json()["type"] == "error"


KEY = "trk-messages-secret-0001"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    root = tmp_path_factory.mktemp("messages-keys")
    (root / "keys.yaml").write_text(f"keys:\n  - {{id: agent, sha256: {hash_key(KEY)}, features: [assistant]}}\n")
    (root / "routing.yaml").write_text("features:\n  assistant: {tier: 3, value: internal, owner: t, failure_cost_usd: 0}\n")
    proc = ServerProcess("--keys", str(root / "keys.yaml"), "--routing", str(root / "routing.yaml"),
                         log_path=root / "server.log")
    proc.wait_ready()
    yield proc
    proc.stop()


def test_the_sdk_authenticates_with_x_api_key_and_bearer_works_too(keyed):
    sdk = anthropic.Anthropic(base_url=keyed.base_url, api_key=KEY, max_retries=0)
    assert sdk.messages.create(model="feature:assistant", max_tokens=4, messages=ASK).content
    bearer = post(keyed, {**GOOD, "model": "feature:assistant"}, headers={"authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    with pytest.raises(anthropic.AuthenticationError) as refused:
        anthropic.Anthropic(base_url=keyed.base_url, api_key="wrong", max_retries=0).messages.create(**GOOD)
    assert refused.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.PermissionDeniedError):  # the key may call its feature, not tier:3 directly
        sdk.messages.count_tokens(model="tier:3", messages=ASK)


def test_feature_routing_by_model_name_and_header(keyed):
    sdk = anthropic.Anthropic(base_url=keyed.base_url, api_key=KEY, max_retries=0)
    by_name = sdk.messages.with_raw_response.create(model="feature:assistant", max_tokens=4, messages=ASK)
    by_header = sdk.messages.with_raw_response.create(model="claude-whatever", max_tokens=4, messages=ASK,
                                                      extra_headers={"x-feature": "assistant"})
    assert by_name.headers["x-feature"] == by_header.headers["x-feature"] == "feature:assistant"


@pytest.fixture(scope="module")
def cut_upstream(server, tmp_path_factory):
    """A gateway whose Tier 3 is the session server behind a proxy that can cut a stream."""
    proxy = FaultProxy(server.base_url).start()
    root = tmp_path_factory.mktemp("messages-cut")
    (root / "profile.yaml").write_text(
        f'tiers:\n  3: {{runner: hosted, model: "tier:3", base_url: "{proxy.base_url}/v1", api_key_env: null, '
        'max_attempts: 1}\n')
    proc = ServerProcess("--profile", str(root / "profile.yaml"), log_path=root / "server.log")
    proc.wait_ready()
    proc.proxy = proxy
    yield proc
    proc.stop()
    proxy.stop()


def test_a_stream_cut_upstream_ends_in_an_anthropic_error_event(cut_upstream):
    cut_upstream.proxy.plan.append(Fault.cut(after_lines=4))
    events = raw_events(cut_upstream.base_url, {**GOOD, "max_tokens": 30, "temperature": 0})
    assert events[0][0] == "message_start"
    name, data = events[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == "api_error"
    assert "mid-stream" in data["error"]["message"]
    assert "message_stop" not in [n for n, _ in events]


WEATHER = {"name": "get_weather", "description": "The current weather in a city.",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ASK_WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tool_round_trip_through_the_sdk(client, streamed):
    """Call (forced by name: a grammar makes the input match the schema), tool result, final answer."""
    kwargs = dict(model="tier:3", max_tokens=40, tools=[WEATHER], extra_body=T0)
    first_kwargs = dict(kwargs, messages=ASK_WEATHER, tool_choice={"type": "tool", "name": "get_weather"})
    if streamed:
        with client.messages.stream(**first_kwargs) as stream:
            kinds = [event.type for event in stream]
            first = stream.get_final_message()
        assert "input_json" in kinds and kinds[-1] == "message_stop"
    else:
        first = client.messages.create(**first_kwargs)
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input["city"], str) and call.id
    history = ASK_WEATHER + [{"role": "assistant", "content": first.content},
                             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                           "content": "Sunny, 24 degrees Celsius."}]}]
    final = client.messages.create(**kwargs, messages=history, tool_choice={"type": "none"})
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in final.content] == ["text"] and final.content[0].text


def test_a_tool_result_for_no_call_is_an_anthropic_400(server):
    body = {**GOOD, "tools": [WEATHER], "messages": ASK_WEATHER + [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nobody", "content": "x"}]}]}
    response = post(server, body)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert "toolu_nobody" in response.json()["error"]["message"]
