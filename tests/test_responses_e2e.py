"""POST /v1/responses (stateless) through the real server and SmolLM2, with the openai SDK's `client.responses`;
every body and stream event validated against OpenAI's OpenAPI document."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from tests.conftest import ServerProcess
from tests.fault_proxy import Fault, FaultProxy
from tests.ledger_reader import ledger_rows
from tests.openai_schema import validate

ASK = "What is the capital of France? Answer in one word."
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


def post(server, body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=60)


def raw_events(base_url: str, body: dict) -> list[dict]:
    with httpx.stream("POST", f"{base_url}/v1/responses", json={**body, "stream": True}, timeout=60) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    names = [line[7:] for line in lines if line.startswith("event: ")]
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [e["type"] for e in events] == names
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def test_a_response_with_instructions_usage_and_a_ledger_row(openai_client, server):
    raw = openai_client.responses.with_raw_response.create(model="tier:3", input=ASK, max_output_tokens=16,
                                                           temperature=0, instructions="You are a geography teacher.")
    body = json.loads(raw.text)
    validate(body, "Response")
    answer = raw.parse()
    assert answer.object == "response" and answer.status == "completed" and answer.id.startswith("resp_")
    assert "Paris" in answer.output_text
    assert [item.type for item in answer.output] == ["message"] and answer.output[0].role == "assistant"
    assert answer.instructions == "You are a geography teacher."
    usage = answer.usage
    assert usage.input_tokens > 10 and 0 < usage.output_tokens <= 16
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    row = next(r for r in ledger_rows(server) if r["request_id"] == raw.headers["x-request-id"])
    assert row["api"] == "responses" and row["prompt_tokens"] == usage.input_tokens


def test_max_output_tokens_makes_it_incomplete(openai_client):
    answer = openai_client.responses.create(model="tier:3", input=ASK, max_output_tokens=2, temperature=0)
    assert answer.status == "incomplete" and answer.incomplete_details.reason == "max_output_tokens"
    assert answer.usage.output_tokens == 2


def test_input_items_carry_the_conversation(openai_client):
    one = openai_client.responses.create(model="tier:3", input=ASK, max_output_tokens=4, temperature=0)
    items = [{"role": "user", "content": ASK},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]},
             {"role": "user", "content": [{"type": "input_text", "text": "And the capital of Italy?"}]}]
    more = openai_client.responses.create(model="tier:3", input=items, max_output_tokens=8, temperature=0)
    assert more.usage.input_tokens > one.usage.input_tokens + 8
    assert more.output_text


def test_text_format_json_schema_is_enforced(openai_client):
    answer = openai_client.responses.create(
        model="tier:3", input="Describe a person called Ada who is 36, as JSON.", max_output_tokens=60, temperature=0,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
    jsonschema.validate(json.loads(answer.output_text), PERSON)
    assert answer.text.format.type == "json_schema"


def test_the_stream_follows_the_responses_event_sequence(openai_client, server):
    whole = openai_client.responses.create(model="tier:3", input=ASK, max_output_tokens=12, temperature=0)
    events = raw_events(server.base_url, {"model": "tier:3", "input": ASK, "max_output_tokens": 12, "temperature": 0})
    for event in events:
        validate(event, "ResponseStreamEvent")
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    end = "response.completed" if whole.status == "completed" else "response.incomplete"
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done", end]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == whole.output_text
    final = events[-1]["response"]
    validate(final, "Response")
    assert final["output"][0]["content"][0]["text"] == text
    assert final["usage"]["output_tokens"] == whole.usage.output_tokens


def test_the_sdk_stream_helper_assembles_the_same_response(openai_client):
    """(The helper's final response needs `response.completed`: an answer cut by max_output_tokens ends in
    `response.incomplete`, as OpenAI's do, so this one is given room to finish.)"""
    whole = openai_client.responses.create(model="tier:3", input=ASK, max_output_tokens=40, temperature=0)
    assert whole.status == "completed"
    with openai_client.responses.stream(model="tier:3", input=ASK, max_output_tokens=40, temperature=0) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert deltas == final.output_text == whole.output_text


GOOD = {"model": "tier:3", "input": ASK, "max_output_tokens": 4}


@pytest.mark.parametrize(("body", "status", "param", "fragment"), [
    ({**GOOD, "previous_response_id": "resp_123"}, 400, "previous_response_id", "stateless"),
    ({**GOOD, "store": True}, 400, "store", "stateless"),
    ({**GOOD, "conversation": "conv_1"}, 400, "conversation", "stateless"),
    ({**GOOD, "tools": [{"type": "web_search"}]}, 400, "tools.0.type", "function"),
    ({**GOOD, "tools": [{"type": "function", "name": '"('}]}, 400, "tools.0.name", "pattern"),
    ({**GOOD, "reasoning": {"effort": "low"}}, 400, "reasoning", "unrecognized"),
    ({**GOOD, "include": ["reasoning.encrypted_content"]}, 400, "include", ""),
    ({**GOOD, "input": [{"type": "reasoning", "summary": []}]}, 400, None, ""),
    ({**GOOD, "text": {"format": {"type": "json_schema"}}}, 400, "text.format", "name"),
    ({**GOOD, "tool_choice": {"type": "function", "name": "nothing"}}, 400, "tool_choice", ""),
    ({"model": "tier:3"}, 400, "input", ""),
    ({**GOOD, "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,iVBO"}]}]},
     400, None, "cannot read image content"),
    ({**GOOD, "model": "feature:no-such-feature"}, 404, "model", ""),
    ({**GOOD, "model": "tier:2"}, 503, None, "tier 2"),
])
def test_bad_input_is_a_clear_400_and_the_server_keeps_serving(server, body, status, param, fragment):
    response = post(server, body)
    assert response.status_code == status, response.text
    payload = response.json()
    validate(payload, "ErrorResponse")
    if param is not None:
        assert (payload["error"]["param"] or "").startswith(param), payload
    assert fragment in payload["error"]["message"]
    assert post(server, GOOD).json()["output"]


@pytest.fixture(scope="module")
def cut_upstream(server, tmp_path_factory):
    proxy = FaultProxy(server.base_url).start()
    root = tmp_path_factory.mktemp("responses-cut")
    (root / "profile.yaml").write_text(
        f'tiers:\n  3: {{runner: hosted, model: "tier:3", base_url: "{proxy.base_url}/v1", api_key_env: null, '
        'max_attempts: 1}\n')
    proc = ServerProcess("--profile", str(root / "profile.yaml"), log_path=root / "server.log")
    proc.wait_ready()
    proc.proxy = proxy
    yield proc
    proc.stop()
    proxy.stop()


def test_a_stream_cut_upstream_ends_in_an_error_event(cut_upstream):
    cut_upstream.proxy.plan.append(Fault.cut(after_lines=4))
    events = raw_events(cut_upstream.base_url, {**GOOD, "max_output_tokens": 30, "temperature": 0})
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "error" and "mid-stream" in events[-1]["message"]
    validate(events[-1], "ResponseStreamEvent")
    assert "response.completed" not in [e["type"] for e in events]


WEATHER = {"type": "function", "name": "get_weather", "description": "The current weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


def test_a_function_call_round_trip(openai_client):
    """Call (forced by name: a grammar makes the arguments match the schema), its output, the final answer."""
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    first = openai_client.responses.with_raw_response.create(
        model="tier:3", input=ask, tools=[WEATHER], tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40, temperature=0)
    validate(json.loads(first.text), "Response")
    call = next(item for item in first.parse().output if item.type == "function_call")
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    history = ask + [{"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
                     {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 degrees Celsius."}]
    final = openai_client.responses.create(model="tier:3", input=history, tools=[WEATHER], tool_choice="none",
                                           max_output_tokens=40, temperature=0)
    assert [item.type for item in final.output] == ["message"] and final.output_text


def test_streamed_function_call_arguments(server):
    events = raw_events(server.base_url, {"model": "tier:3", "input": "What is the weather in Paris?",
                                          "tools": [WEATHER], "tool_choice": "required", "max_output_tokens": 40,
                                          "temperature": 0})
    for event in events:
        validate(event, "ResponseStreamEvent")
    kinds = [e["type"] for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    pieces = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert done["name"] == "get_weather" and done["arguments"] == pieces and json.loads(pieces)["city"]
    final = events[-1]["response"]
    assert final["output"][-1]["type"] == "function_call" and final["output"][-1]["arguments"] == pieces
