"""Tool requests that cannot be right are refused by name before routing; tool calls are gated like answers."""

from __future__ import annotations

import pytest

from runners.answer import Answer, Choice
from runners.errors import InvalidRequest
from runners.request import ToolCall
from runners.request_checks import check_request
from runners.wire.openai_chat import to_request
from runners.wire.openai_chat_protocol import ChatCompletionRequest
from tiers.gates import GATES, run_gates

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = {"role": "user", "content": "Weather in Oslo?"}
CALLED = {"role": "assistant", "content": None, "tool_calls": [
    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}


def internal(**body):
    return to_request(ChatCompletionRequest.model_validate({"model": "tier:3", "messages": [ASK], **body}))


@pytest.mark.parametrize(("body", "param", "says"), [
    ({"tools": [TIME, {"type": "function", "function": {"name": "bad", "parameters": {"type": "object",
                                                                                      "properties": {"x": {"type": 7}}}}}]},
     "tools[1]", "not a valid JSON Schema"),
    ({"tools": [{"type": "function", "function": {"name": "bad", "parameters": {"type": "string"}}}]},
     "tools[0]", "type 'object'"),
    ({"tools": [TIME, TIME]}, "tools[1]", "second function named 'get_time'"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_time"}}},
     "tool_choice", "not among the tools offered (get_weather)"),
    ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
    ({"tools": [WEATHER], "messages": [ASK, {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}]},
     "messages[1].tool_call_id", "no earlier assistant message"),
    ({"tools": [WEATHER], "messages": [ASK, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}, CALLED]},
     "messages[1].tool_call_id", "'call_1'"),
])
def test_a_tool_request_that_cannot_be_right_is_a_400_naming_the_field(body, param, says):
    with pytest.raises(InvalidRequest) as raised:
        check_request(internal(**body))
    assert raised.value.param == param and raised.value.status_code == 400
    assert says in raised.value.message


def test_a_well_formed_round_trip_passes():
    check_request(internal(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}},
                           messages=[ASK, CALLED, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]))


def answer(*calls: tuple[str, str], text: str | None = None) -> Answer:
    made = [ToolCall(id=f"call_{i}", name=n, arguments=a) for i, (n, a) in enumerate(calls)]
    return Answer(model="m", choices=[Choice(text=text, tool_calls=made,
                                             finish_reason="tool_calls" if made else "stop")])


@pytest.mark.parametrize(("calls", "choice", "passed", "reason"), [
    ([("get_weather", '{"city": "Oslo", "days": 2}')], None, True, "ok"),
    ([("get_weather", '{"city": "Oslo"}'), ("get_time", "{}")], "required", True, "ok"),
    ([("get_weather", '{"city": "Oslo"')], None, False, "invalid_json@get_weather"),
    ([("get_weather", '{"city": 3}')], None, False, "schema_violation@get_weather/city"),
    ([("get_weather", '{"city": "Oslo", "days": 0}')], None, False, "schema_violation@get_weather/days"),
    ([("get_weather", '{"town": "Oslo"}')], None, False, "schema_violation@get_weather/root"),
    ([("get_forecast", "{}")], None, False, "unknown_function"),
    ([], "required", False, "no_call"),
    ([], {"type": "function", "function": {"name": "get_time"}}, False, "no_call"),
    ([("get_weather", '{"city": "Oslo"}')], {"type": "function", "function": {"name": "get_time"}}, False,
     "not_the_chosen_function@get_weather"),
    ([("get_time", "{}")], "none", False, "call_with_tool_choice_none"),
    ([], "auto", True, "ok"),
])
def test_the_tool_call_gate_checks_name_arguments_and_tool_choice(calls, choice, passed, reason):
    request = internal(tools=[WEATHER, TIME], **({"tool_choice": choice} if choice else {}))
    verdict = run_gates([GATES["tool_call"]()], request, [answer(*calls, text=None if calls else "It is sunny.")])
    assert (verdict.gate, verdict.passed, verdict.reason) == ("tool_call", passed, reason)
