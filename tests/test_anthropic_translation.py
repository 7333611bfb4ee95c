"""Properties of the OpenAI <-> Anthropic translation, and of the retry and circuit-breaker rules (no I/O)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runners.capabilities import refuse_unsupported
from runners.errors import InvalidRequest, RunnerFailed
from runners.wire.anthropic import CAPABILITIES, JSON_INSTRUCTION, StreamTranslator, from_anthropic, to_anthropic
from runners.wire.openai_chat import ChunkWriter, to_completion, to_request
from runners.wire.openai_chat_protocol import ChatCompletionRequest
from runners.resilience import CircuitBreaker, RetryPolicy, retry_after_s
from tests.openai_schema import validate

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
message = st.builds(lambda role, content: {"role": role, "content": content},
                    st.sampled_from(["system", "developer", "user", "assistant"]), text)
stops = st.one_of(st.none(), st.text(min_size=1, max_size=5), st.lists(st.text(min_size=1, max_size=5), max_size=4))
STOP_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "refusal": "content_filter",
                "tool_use": "tool_calls", None: "stop"}


@st.composite
def requests(draw) -> ChatCompletionRequest:
    messages = draw(st.lists(message, min_size=1, max_size=8))
    messages.append({"role": "user", "content": draw(text.filter(bool))})  # at least one real turn
    fields = {"model": "feature:x", "messages": messages,
              "temperature": draw(st.one_of(st.none(), st.floats(0, 1))),
              "top_p": draw(st.one_of(st.none(), st.floats(0.01, 1))),
              "max_tokens": draw(st.one_of(st.none(), st.integers(1, 4096))),
              "stop": draw(stops), "seed": draw(st.one_of(st.none(), st.integers(0, 2**31))),
              "response_format": draw(st.sampled_from([None, {"type": "text"}, {"type": "json_object"}]))}
    return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})


@settings(max_examples=300, deadline=None)
@given(requests(), st.booleans())
def test_request_translation_keeps_every_turn_and_setting(request, stream):
    internal = to_request(request)
    body = to_anthropic(internal, "claude-x", default_max_tokens=777, stream=stream)
    system = [m.content for m in request.messages if m.role in ("system", "developer") and m.content]
    if request.response_format is not None and request.response_format.type == "json_object":
        system.append(JSON_INSTRUCTION)
    assert body.get("system") == ("\n\n".join(system) if system else None)
    turns = body["messages"]
    assert all(a["role"] != b["role"] for a, b in zip(turns, turns[1:]))  # roles alternate
    assert all(block["type"] == "text" and block["text"] for turn in turns for block in turn["content"])
    said = [(m.role, m.content) for m in request.messages if m.role in ("user", "assistant") and m.content]
    assert [(t["role"], b["text"]) for t in turns for b in t["content"]] == said  # nothing lost, nothing reordered
    assert body["max_tokens"] == (request.max_tokens or 777)
    stop = [request.stop] if isinstance(request.stop, str) else [s for s in request.stop or [] if s]
    assert body.get("stop_sequences") == ([s for s in stop if s] or None)
    assert body.get("temperature") == request.temperature and body.get("top_p") == request.top_p
    assert body.get("stream") == (True if stream else None)
    assert "seed" not in body and body["model"] == "claude-x"


@pytest.mark.parametrize("extra, param", [
    ({"logprobs": True}, "logprobs"), ({"top_logprobs": 3}, "top_logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"frequency_penalty": -1}, "frequency_penalty"),
    ({"temperature": 1.5}, "temperature"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {}}}}, "response_format"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
])
def test_untranslatable_parameters_are_a_400_naming_them(extra, param):
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                    **extra})
    with pytest.raises(InvalidRequest) as caught:
        internal = to_request(request)
        refuse_unsupported(internal, CAPABILITIES, "tier 1 (claude-x on the Anthropic Messages API)")
        to_anthropic(internal, "claude-x", 100, stream=False)
    assert caught.value.param == param and param in caught.value.message
    assert caught.value.status_code == 400


usage = st.fixed_dictionaries({"input_tokens": st.integers(0, 10**6), "output_tokens": st.integers(0, 10**6)},
                              optional={"cache_read_input_tokens": st.integers(0, 10**5),
                                        "cache_creation_input_tokens": st.one_of(st.none(), st.integers(0, 10**5))})
blocks = st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, text),
                            st.builds(lambda t: {"type": "thinking", "thinking": t, "signature": "s"}, text)),
                  max_size=5)


@settings(max_examples=300, deadline=None)
@given(blocks, st.sampled_from(list(STOP_REASONS)), usage)
def test_response_translation_is_a_valid_openai_completion(content, stop_reason, usage):
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": content,
               "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}
    completion = to_completion(from_anthropic(message))
    validate(completion.model_dump(mode="json"), "CreateChatCompletionResponse")
    choice = completion.choices[0]
    assert choice.message.content == "".join(b["text"] for b in content if b["type"] == "text")
    assert choice.finish_reason == STOP_REASONS[stop_reason]
    prompt = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0) + (usage.get("cache_creation_input_tokens") or 0)
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (prompt, usage["output_tokens"])
    assert completion.usage.total_tokens == prompt + usage["output_tokens"]


def sse(events: list[dict]) -> list[str]:
    import json

    lines = []
    for event in events:
        lines += [f"event: {event['type']}", f"data: {json.dumps(event)}", ""]
    return lines


@settings(max_examples=300, deadline=None)
@given(st.lists(text, max_size=10), st.sampled_from(list(STOP_REASONS)), usage, st.booleans(), st.randoms())
def test_stream_translation_matches_the_whole_message(pieces, stop_reason, usage, include_usage, rnd):
    start_usage = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
    events = [{"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                    "model": "claude-x", "content": [], "usage": start_usage}},
              {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}]
    events += [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}} for p in pieces]
    events += [{"type": "content_block_stop", "index": 0},
               {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]}},
               {"type": "message_stop"}]
    for _ in range(rnd.randint(0, 3)):
        events.insert(rnd.randint(1, len(events) - 1), {"type": "ping"})
    translator, writer = StreamTranslator(), ChunkWriter("claude-x", include_usage)
    chunks = [c for line in sse(events) for delta in translator.feed_line(line) for c in writer.chunks(delta)]
    assert translator.done
    for chunk in chunks:
        validate(chunk.model_dump(mode="json"), "CreateChatCompletionStreamResponse")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(pieces)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [STOP_REASONS[stop_reason]]
    whole = to_completion(from_anthropic({"id": "msg_1", "model": "claude-x", "content": [{"type": "text", "text": "".join(pieces)}],
                            "stop_reason": stop_reason, "usage": {"input_tokens": usage["input_tokens"],
                                                                  "output_tokens": usage["output_tokens"]}}))
    if include_usage:
        assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    else:
        assert all(c.usage is None for c in chunks)


def test_an_error_event_mid_stream_raises():
    translator = StreamTranslator()
    with pytest.raises(RunnerFailed, match="overloaded_error: Overloaded"):
        translator.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


@given(st.integers(1, 10), st.floats(0, 5), st.floats(0, 30), st.floats(0, 60), st.one_of(st.none(), st.floats(0, 100)))
def test_retry_delays_stay_within_attempts_backoff_and_budget(max_attempts, base, cap, budget, retry_after):
    policy = RetryPolicy(max_attempts=max_attempts, base_s=base, max_backoff_s=cap, budget_s=budget)
    for attempt in range(1, max_attempts + 2):
        delay = policy.delay_s(attempt, started=0.0, retry_after_s=retry_after, now=1.0)
        if attempt >= max_attempts:
            assert delay is None
        elif delay is not None:
            assert 1.0 + delay <= budget
            if retry_after is not None:
                assert delay == retry_after  # the server's word wins over our backoff
            else:
                step = min(cap, base * 2 ** (attempt - 1))
                assert step / 2 <= delay <= step


def test_backoff_doubles_with_jitter():
    policy, rng = RetryPolicy(base_s=1, max_backoff_s=100), random.Random(7)
    delays = [policy.backoff_s(n, rng) for n in range(5)]
    assert all(2 ** n / 2 <= d <= 2 ** n for n, d in enumerate(delays))


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after_s("2") == 2.0 and retry_after_s("0.5") == 0.5 and retry_after_s(None) is None
    import email.utils

    assert retry_after_s(email.utils.formatdate(1_800_000_010, usegmt=True), now=1_800_000_000) == 10.0
    assert retry_after_s("soon") is None


@given(st.lists(st.booleans(), max_size=30), st.integers(1, 5))
def test_circuit_opens_only_after_n_consecutive_failures(outcomes, threshold):
    breaker = CircuitBreaker(failure_threshold=threshold, cooldown_s=3600)
    run = 0
    for ok in outcomes:
        if breaker.state() == "open":
            assert not breaker.allow()
            break
        assert breaker.allow()
        breaker.record_success() if ok else breaker.record_failure("x")
        run = 0 if ok else run + 1
        assert (breaker.state() == "open") == (run >= threshold)


def test_half_open_lets_one_probe_through_and_its_result_decides():
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=0.05)
    breaker.record_failure("HTTP 500")
    assert breaker.state() == "open" and not breaker.allow() and "HTTP 500" in breaker.describe()
    import time

    time.sleep(0.06)
    assert breaker.state() == "half_open" and breaker.allow() and not breaker.allow()
    breaker.record_failure("HTTP 503")
    assert breaker.state() == "open"
    time.sleep(0.06)
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state() == "closed" and breaker.describe() == ""


@pytest.mark.parametrize("event", [
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": 5}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ["a"]}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": 3, "name": "f"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": {"a": 1}}},
])
def test_a_stream_event_with_a_field_of_the_wrong_type_is_not_valid(event):
    """The hosted runner turns ValueError from the translator into "sent a stream event that is not valid"."""
    with pytest.raises(ValueError):
        StreamTranslator().feed(event)
