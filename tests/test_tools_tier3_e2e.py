"""Tool calling on Tier 3 with both shipped models through the real gateway: Qwen2.5-Coder-0.5B (tier:3, its own
template lists the tools) and SmolLM2 (tier:2 here, a generic tool prompt). Every body and chunk is checked
against OpenAI's OpenAPI document."""

from __future__ import annotations

import json
import sqlite3

import httpx
import jsonschema
import pytest

from tests.openai_schema import validate

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"},
                                                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                  "required": ["city"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                            "parameters": WEATHER_SCHEMA}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone", "parameters": {
    "type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
ASK = [{"role": "user", "content": "What is the weather in Oslo?"}]
QWEN, SMOL = "tier:3", "tier:2"


def chat(gateway, model: str, **body) -> httpx.Response:
    payload = {"model": model, "messages": ASK, "temperature": 0, "max_tokens": 80, "tools": [WEATHER, CLOCK], **body}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=payload, timeout=300)
    if response.status_code == 200:
        validate(response.json(), "CreateChatCompletionResponse")
    return response


def stream(gateway, model: str, **body) -> list[dict]:
    payload = {"model": model, "messages": ASK, "temperature": 0, "max_tokens": 80, "tools": [WEATHER, CLOCK],
               "stream": True, "stream_options": {"include_usage": True}, **body}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=payload, timeout=300) as response:
        assert response.status_code == 200, response.read()
        data = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    return chunks


def assemble(chunks: list[dict]) -> dict[int, dict]:
    """Per choice: text, calls (id, name, arguments) and finish reason, from stream chunks as a client folds them."""
    choices: dict[int, dict] = {}
    for chunk in chunks:
        for c in chunk["choices"]:
            choice = choices.setdefault(c["index"], {"text": "", "calls": {}, "finish": None})
            choice["text"] += c["delta"].get("content") or ""
            for piece in c["delta"].get("tool_calls") or []:
                call = choice["calls"].setdefault(piece["index"], {"id": piece.get("id"), "name": "", "arguments": ""})
                call["name"] += piece.get("function", {}).get("name") or ""
                call["arguments"] += piece.get("function", {}).get("arguments") or ""
            choice["finish"] = c["finish_reason"] or choice["finish"]
    return choices


def only_call(response: httpx.Response) -> dict:
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    return call["function"]


@pytest.mark.parametrize("model", [QWEN, SMOL])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_required_and_named_choices_give_a_call_that_matches_the_schema(tool_gateway, model, choice):
    call = only_call(chat(tool_gateway, model, tool_choice=choice))
    assert call["name"] == "get_weather"
    arguments = json.loads(call["arguments"])
    jsonschema.validate(arguments, WEATHER_SCHEMA)
    assert arguments["city"] == "Oslo"


def test_a_named_choice_is_held_even_when_the_question_fits_another_tool(tool_gateway):
    call = only_call(chat(tool_gateway, SMOL, tool_choice={"type": "function", "function": {"name": "get_time"}}))
    assert call["name"] == "get_time" and isinstance(json.loads(call["arguments"])["timezone"], str)


def test_auto_on_qwen_calls_for_a_tool_question_and_answers_other_questions_in_text(tool_gateway):
    assert only_call(chat(tool_gateway, QWEN))["name"] == "get_weather"
    choice = chat(tool_gateway, QWEN, messages=[{"role": "user", "content": "Tell me a joke about cats."}],
                  tools=[WEATHER]).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"]  # it writes a JSON-looking answer naming no offered tool: text, not a call


def test_auto_on_smollm2_answers_in_text_its_template_has_no_tools(tool_gateway):
    """Documented: on a template without tool support `auto` lists the tools in a generic system prompt; SmolLM2
    then answers in text (a call it did write would be read and constrained like Qwen's)."""
    choice = chat(tool_gateway, SMOL).json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and "tool_calls" not in choice["message"]
    assert choice["message"]["content"]


@pytest.mark.parametrize(("model", "body"), [(QWEN, {}), (SMOL, {"tool_choice": "required"})])
def test_a_streamed_call_sends_id_and_name_then_argument_fragments_and_matches_the_whole(tool_gateway, model, body):
    chunks = stream(tool_gateway, model, **body)
    pieces = [p for c in chunks for ch in c["choices"] for p in ch["delta"].get("tool_calls") or []]
    assert pieces[0]["id"].startswith("call_") and pieces[0]["function"]["name"] == "get_weather"
    assert all("id" not in p and "name" not in p.get("function", {}) for p in pieces[1:])
    assert len(pieces) > 3, "arguments should arrive in fragments"
    (choice,) = assemble(chunks).values()
    assert choice["finish"] == "tool_calls" and choice["text"] == ""
    whole = only_call(chat(tool_gateway, model, **body))
    assert (choice["calls"][0]["name"], choice["calls"][0]["arguments"]) == (whole["name"], whole["arguments"])
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_parallel_calls_only_when_asked_and_a_call_cut_short_is_returned_as_generated(tool_gateway):
    """Allowed parallel calls, SmolLM2 repeats its call and max_tokens cuts the second one short (finish length,
    arguments that do not parse: the tool_call gate's job); without parallel_tool_calls: true it makes one call."""
    looped = chat(tool_gateway, SMOL, tool_choice="required", parallel_tool_calls=True,
                  max_tokens=70).json()["choices"][0]
    assert looped["finish_reason"] == "length" and len(looped["message"]["tool_calls"]) > 1
    with pytest.raises(json.JSONDecodeError):
        json.loads(looped["message"]["tool_calls"][-1]["function"]["arguments"])
    single = chat(tool_gateway, SMOL, tool_choice="required").json()["choices"][0]
    assert single["finish_reason"] == "tool_calls" and len(single["message"]["tool_calls"]) == 1


def test_a_round_trip_renders_the_call_and_its_result_in_the_models_template(tool_gateway):
    """call, tool result, final answer: SmolLM2 answers in text once the result is in (tool_choice back to auto)."""
    call = chat(tool_gateway, SMOL, tool_choice="required").json()["choices"][0]["message"]
    result = {"role": "tool", "tool_call_id": call["tool_calls"][0]["id"], "content": "Sunny, 21 degrees Celsius"}
    final = chat(tool_gateway, SMOL, messages=ASK + [call, result]).json()["choices"][0]
    assert final["finish_reason"] in ("stop", "length") and "tool_calls" not in final["message"]
    assert "21" in final["message"]["content"]


def test_n_choices_share_the_prompt_and_sum_the_completions(tool_gateway):
    one = chat(tool_gateway, QWEN, tool_choice="required").json()
    three = chat(tool_gateway, QWEN, tool_choice="required", n=3, temperature=0.9, seed=4).json()
    assert [c["index"] for c in three["choices"]] == [0, 1, 2]
    for choice in three["choices"]:
        (call,) = choice["message"]["tool_calls"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER_SCHEMA)
    assert three["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]  # counted once, not per choice
    assert three["usage"]["completion_tokens"] > one["usage"]["completion_tokens"]
    chunks = stream(tool_gateway, QWEN, tool_choice="required", n=2, temperature=0.9, seed=4)
    assert sorted(assemble(chunks)) == [0, 1] and all(c["finish"] == "tool_calls" for c in assemble(chunks).values())


def test_a_tool_feature_is_gated_and_its_row_records_the_call_and_the_verdict(tool_gateway):
    response = chat(tool_gateway, "feature:weather-agent", tool_choice="required")
    assert response.headers["x-gate"] == "tool_call:ok", response.headers
    assert ledger(tool_gateway, response.headers["x-request-id"]) == [(1, "tool_call", 1, "ok", 3, 0)]


def ledger(gateway, request_id: str) -> list[tuple]:
    """(tool_calls, gate, gate_passed, gate_reason, serving_tier, escalated) of each attempt, in order."""
    httpx.get(f"{gateway.base_url}/v1/audit", timeout=30)  # flushes the spool first
    db = sqlite3.connect(gateway.data_dir / "ledger.db")
    try:
        return db.execute("SELECT tool_calls, gate, gate_passed, gate_reason, serving_tier, escalated FROM attempts "
                          "WHERE request_id = ? ORDER BY attempt_no", (request_id,)).fetchall()
    finally:
        db.close()


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                              "required": "city"}}}]}, "tools[0]"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_forecast"}}}, "tool_choice"),
    ({"messages": ASK + [{"role": "tool", "tool_call_id": "call_nobody", "content": "sunny"}]}, "messages[1].tool_call_id"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"response_format": {"type": "json_object"}, "tool_choice": "required"}, "response_format"),
])
def test_bad_tool_requests_are_a_400_naming_the_field_and_the_server_keeps_serving(tool_gateway, body, param):
    response = chat(tool_gateway, QWEN, **body)
    assert response.status_code == 400, response.text
    validate(response.json(), "ErrorResponse")
    assert response.json()["error"]["param"] == param
    assert chat(tool_gateway, SMOL, tool_choice="required", max_tokens=40).status_code == 200
