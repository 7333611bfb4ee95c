"""Tier 3's tool-call syntax without a model: grammars llama.cpp accepts, triggers the grammar can follow, and a
parser that reads the same calls whether the text arrives whole or piece by piece."""

from __future__ import annotations

import re

import llama_cpp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runners.errors import InvalidRequest
from runners.llama_tools import ToolCallParser, call_grammar, parse, plan_tools, trigger_patterns
from runners.request import Request, Tool, ToolChoice

WEATHER = Tool(name="get_weather", parameters={"type": "object", "properties": {"city": {"type": "string"}},
                                               "required": ["city"]})
CLOCK = Tool(name="get.time-now")
TOOLS = [WEATHER, CLOCK]
USER = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]

WHOLE = [
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os\\"lo {x}"}}\n</tool_call>',
     "", [("get_weather", '{"city": "Os\\"lo {x}"}')], False),
    ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Oslo"\n  }\n}\n```',
     "", [("get_weather", '{\n    "city": "Oslo"\n  }')], False),
    ('Let me look.\n{"name": "get.time-now", "arguments": {}}\n', "Let me look.", [("get.time-now", "{}")], False),
    ('{"name": "Cat Joke", "arguments": {"cat": "Meow"}}', '{"name": "Cat Joke", "arguments": {"cat": "Meow"}}', [], False),
    ("I <3 {braces} and `code`\n", "I <3 {braces} and `code`\n", [], False),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os', "", [("get_weather", '{"city": "Os')], True),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>\n'
     '<tool_call>{"name": "get.time-now", "arguments": {}}</tool_call>', "",
     [("get_weather", '{"city": "A"}'), ("get.time-now", "{}")], False),
]


@pytest.mark.parametrize(("text", "content", "calls", "incomplete"), WHOLE)
def test_calls_are_read_in_every_form_a_small_model_writes(text, content, calls, incomplete):
    parsed = parse(TOOLS, text)
    assert (parsed.text, [(c.name, c.arguments) for c in parsed.calls], parsed.incomplete) == (content, calls, incomplete)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(WHOLE), st.lists(st.integers(1, 7), min_size=1, max_size=200))
def test_pieces_in_any_split_give_the_same_answer_as_the_whole_text(case, sizes):
    text = case[0]
    parser, events, at = ToolCallParser(TOOLS), [], 0
    for size in sizes * (len(text) // max(1, sum(sizes)) + 1):
        if at >= len(text):
            break
        events += parser.feed(text[at:at + size])
        at += size
    events += parser.finish()
    whole = parse(TOOLS, text)
    assert "".join(e[1] for e in events if e[0] == "text") == whole.text
    streamed: dict[int, list[str]] = {}
    for e in events:
        if e[0] == "call":
            streamed[e[1]] = [e[3], ""]
        elif e[0] == "args":
            streamed[e[1]][1] += e[2]
    assert [tuple(v) for _, v in sorted(streamed.items())] == [(c.name, c.arguments) for c in whole.calls]


@pytest.mark.parametrize("choice", [None, "auto", "required", "function"])
@pytest.mark.parametrize("parallel", [None, True, False])
def test_every_plan_is_a_grammar_llama_cpp_parses(choice, parallel):
    tool_choice = None if choice is None else ToolChoice(mode=choice, name="get_weather" if choice == "function" else None)
    plan = plan_tools(Request(messages=USER, tools=TOOLS, tool_choice=tool_choice, parallel_tool_calls=parallel))
    assert plan is not None and plan.lazy == (choice in (None, "auto"))
    assert [t.name for t in plan.tools] == (["get_weather"] if choice == "function" else ["get_weather", "get.time-now"])
    assert llama_cpp.LlamaGrammar.from_string(plan.grammar, verbose=False) is not None
    assert ("( space tool-call )*" in plan.grammar) == (parallel is True and choice != "function")


def test_no_plan_without_tools_or_with_tool_choice_none():
    assert plan_tools(Request(messages=USER)) is None
    assert plan_tools(Request(messages=USER, tools=TOOLS, tool_choice=ToolChoice(mode="none"))) is None


def test_what_a_trigger_matches_starts_a_call_in_the_grammar():
    """The engine feeds the grammar the text from the trigger's match on: each trigger form must be one the
    grammar accepts, and a JSON object naming no offered function must not trigger at all."""
    patterns = [re.compile(p) for p in trigger_patterns(TOOLS)]
    for text, rest in [("<tool_call>", '{"name": "get_weather", "arguments": {}}</tool_call>'),
                       ('```json\n{\n  "name": "get.time-now"', ', "arguments": {}}\n```'),
                       ('{"name": "get_weather"', ', "arguments": {}}')]:
        assert any(p.match(text) for p in patterns), text
        assert len(parse(TOOLS, text + rest).calls) == 1
    assert not any(p.search('{"name": "Cat Joke"') for p in patterns)
    grammar = call_grammar(TOOLS, TOOLS, parallel=False, loose_forms=True)
    assert '"```" "json"? "\\n" space call space "```"' in grammar and "| ( call )" in grammar


def test_a_schema_the_grammar_cannot_express_is_a_400_naming_the_tool():
    bad = Tool(name="bad", parameters={"type": "object", "properties": {"x": {"$ref": "#/$defs/missing"}}})
    with pytest.raises(InvalidRequest) as raised:
        plan_tools(Request(messages=USER, tools=[WEATHER, bad], tool_choice=ToolChoice(mode="required")))
    assert raised.value.param == "tools[1]"


def test_string_arguments_cannot_hold_raw_control_characters():
    """JSON forbids them; llama-cpp-python's converter allowed them, so a call could be generated that never parses."""
    grammar = call_grammar(TOOLS, [WEATHER], parallel=False, loose_forms=False)
    char = next(line for line in grammar.splitlines() if line.startswith("char ::="))
    assert r"\x00-\x1F]" in char and r"\x7F" in char, char
