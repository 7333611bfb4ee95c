"""Properties of the OpenAI <-> Anthropic translation for tools, both ways (no I/O): tools <-> input_schema,
tool_choice <-> auto/any/tool/none, tool_calls <-> tool_use, tool messages <-> tool_result, and streamed
input_json_delta <-> argument fragments. Every chunk and completion is checked against OpenAI's OpenAPI document."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runners.answer import AnswerBuilder
from runners.errors import InvalidRequest
from runners.wire.anthropic import StreamTranslator, from_anthropic, to_anthropic
from runners.wire.openai_chat import ChunkWriter, to_completion, to_request
from runners.wire.openai_chat_protocol import ChatCompletionRequest
from tests.openai_schema import validate

names = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_-]{0,20}", fullmatch=True)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | text,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                           max_leaves=8)
arguments = st.dictionaries(names, json_values, max_size=4)
schemas = st.builds(lambda props: {"type": "object", "properties": {p: {"type": "string"} for p in props},
                                   "required": sorted(props)[:1]}, st.sets(names, max_size=3))


@st.composite
def tool_specs(draw) -> list[dict]:
    chosen = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    tools = []
    for name in chosen:
        function = {"name": name, "parameters": draw(schemas)}
        if draw(st.booleans()):
            function["description"] = draw(text)
        tools.append({"type": "function", "function": function})
    return tools


@settings(max_examples=200, deadline=None)
@given(tool_specs(), st.data(), st.sampled_from([None, True, False]))
def test_tools_and_tool_choice_become_input_schema_and_anthropic_choice(tools, data, parallel):
    offered = [t["function"]["name"] for t in tools]
    choice = data.draw(st.sampled_from([None, "none", "auto", "required"]
                                       + [{"type": "function", "function": {"name": n}} for n in offered]))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": tools}
    body.update({k: v for k, v in (("tool_choice", choice), ("parallel_tool_calls", parallel)) if v is not None})
    out = to_anthropic(to_request(ChatCompletionRequest.model_validate(body)), "claude-x", 100, stream=False)
    expected = []
    for t in tools:
        f = t["function"]
        expected.append({"name": f["name"], "input_schema": f["parameters"],
                         **({"description": f["description"]} if f.get("description") else {})})
    assert out["tools"] == expected
    if choice is None and parallel is not False:
        assert "tool_choice" not in out
        return
    kind = {None: "auto", "none": "none", "auto": "auto", "required": "any"}.get(choice if isinstance(choice, str)
                                                                                  or choice is None else "", "tool")
    assert out["tool_choice"]["type"] == kind
    assert out["tool_choice"].get("name") == (choice["function"]["name"] if kind == "tool" else None)
    assert out["tool_choice"].get("disable_parallel_tool_use") == (True if parallel is False and kind != "none" else None)


@st.composite
def conversations(draw) -> list[dict]:
    """user, then rounds of an assistant turn with calls and one tool message per call, then a user turn."""
    messages = [{"role": "user", "content": draw(text.filter(str.strip))}]
    for r in range(draw(st.integers(1, 3))):
        calls = [{"id": f"call_{r}_{i}", "type": "function",
                  "function": {"name": draw(names), "arguments": json.dumps(draw(arguments))}}
                 for i in range(draw(st.integers(1, 3)))]
        said = draw(st.one_of(st.none(), text.filter(str.strip)))
        messages.append({"role": "assistant", "content": said, "tool_calls": calls})
        messages += [{"role": "tool", "tool_call_id": c["id"], "content": draw(text)} for c in calls]
    messages.append({"role": "user", "content": draw(text.filter(str.strip))})
    return messages


@settings(max_examples=200, deadline=None)
@given(conversations())
def test_tool_calls_become_tool_use_and_results_tool_result_blocks_in_order(messages):
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": messages})
    turns = to_anthropic(to_request(body), "claude-x", 100, stream=False)["messages"]
    assert all(a["role"] != b["role"] for a, b in zip(turns, turns[1:]))
    uses = [b for t in turns if t["role"] == "assistant" for b in t["content"] if b["type"] == "tool_use"]
    calls = [c for m in messages if m["role"] == "assistant" for c in m["tool_calls"]]
    assert [(u["id"], u["name"], u["input"]) for u in uses] == \
        [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]
    results = [b for t in turns if t["role"] == "user" for b in t["content"] if b["type"] == "tool_result"]
    assert [(r["tool_use_id"], r["content"]) for r in results] == \
        [(m["tool_call_id"], m["content"]) for m in messages if m["role"] == "tool"]
    for turn in turns:  # every result sits in the user turn right after the assistant turn that called
        if turn["role"] == "user" and any(b["type"] == "tool_result" for b in turn["content"]):
            before = turns[turns.index(turn) - 1]
            called = {b["id"] for b in before["content"] if b["type"] == "tool_use"}
            assert {b["tool_use_id"] for b in turn["content"] if b["type"] == "tool_result"} <= called


@pytest.mark.parametrize("bad", ["[1, 2]", "not json", '"a string"'])
def test_arguments_that_are_not_an_object_are_a_400_naming_the_call(bad):
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": bad}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]})
    with pytest.raises(InvalidRequest) as raised:
        to_anthropic(to_request(body), "claude-x", 100, stream=False)
    assert raised.value.param == "messages[1].tool_calls"


blocks = st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, text.filter(bool)),
                            st.builds(lambda n, a, i: {"type": "tool_use", "id": f"toolu_{i}", "name": n, "input": a},
                                      names, arguments, st.integers(0, 10**6))), min_size=1, max_size=5)


@settings(max_examples=200, deadline=None)
@given(blocks, st.sampled_from(["tool_use", "end_turn", "max_tokens"]))
def test_tool_use_blocks_become_openai_tool_calls(content, stop_reason):
    ids = [b["id"] for b in content if b["type"] == "tool_use"]
    if len(set(ids)) != len(ids):
        return
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
               "stop_reason": stop_reason, "usage": {"input_tokens": 5, "output_tokens": 7}}
    completion = to_completion(from_anthropic(message))
    validate(completion.model_dump(mode="json"), "CreateChatCompletionResponse")
    choice = completion.choices[0]
    calls = choice.message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == \
        [(b["id"], b["name"], b["input"]) for b in content if b["type"] == "tool_use"]
    assert choice.finish_reason == {"tool_use": "tool_calls", "end_turn": "stop", "max_tokens": "length"}[stop_reason]
    said = "".join(b["text"] for b in content if b["type"] == "text")
    assert choice.message.content == (said if said or not calls else None)


@settings(max_examples=200, deadline=None)
@given(blocks, st.randoms(), st.booleans())
def test_streamed_input_json_deltas_become_argument_fragments(content, rnd, include_usage):
    events = [{"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                    "model": "claude-x", "content": [], "usage": {"input_tokens": 3}}}]
    for index, block in enumerate(content):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            events.append({"type": "content_block_delta", "index": index,
                           "delta": {"type": "text_delta", "text": block["text"]}})
        else:
            events.append({"type": "content_block_start", "index": index, "content_block": {
                "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})
            raw = json.dumps(block["input"])
            cuts = sorted(rnd.sample(range(1, len(raw)), min(len(raw) - 1, rnd.randint(0, 4)))) if len(raw) > 1 else []
            for a, b in zip([0] + cuts, cuts + [len(raw)]):
                events.append({"type": "content_block_delta", "index": index,
                               "delta": {"type": "input_json_delta", "partial_json": raw[a:b]}})
        events.append({"type": "content_block_stop", "index": index})
    events += [{"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}},
               {"type": "message_stop"}]
    translator, writer, whole = StreamTranslator(), ChunkWriter("claude-x", include_usage), AnswerBuilder("claude-x")
    chunks = []
    for event in events:
        for delta in translator.feed(event):
            whole.add(delta)
            chunks += writer.chunks(delta)
    for chunk in chunks:
        validate(chunk.model_dump(mode="json"), "CreateChatCompletionStreamResponse")
    pieces: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for piece in choice.delta.tool_calls or []:
                call = pieces.setdefault(piece.index, {"id": piece.id, "name": piece.function.name, "arguments": ""})
                assert piece.id is None or piece.id == call["id"]
                call["arguments"] += piece.function.arguments or ""
    uses = [b for b in content if b["type"] == "tool_use"]
    assert sorted(pieces) == list(range(len(uses)))  # call indexes count tool_use blocks only
    assert [(pieces[i]["id"], pieces[i]["name"], json.loads(pieces[i]["arguments"])) for i in sorted(pieces)] == \
        [(b["id"], b["name"], b["input"]) for b in uses]
    answer = whole.answer()
    assert [json.loads(c.arguments) for c in answer.first.tool_calls] == [b["input"] for b in uses]
    assert answer.first.finish_reason == "tool_calls"
