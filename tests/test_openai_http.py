"""The OpenAI wire shared by the vLLM and hosted runners: request body, SSE parsing, error bodies, and the
chat adapter both ways (a client's request in, our answer out)."""

from __future__ import annotations

import pytest

from runners.errors import RunnerFailed
from runners.openai_http import OpenAIStream, error_message
from runners.wire.openai_chat import to_payload, to_request
from runners.wire.openai_chat_protocol import ChatCompletionRequest

CHUNK = ('data: {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", '
         '"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": null}]}')


def test_payload_has_the_backends_model_and_no_stream_options_unless_streaming():
    request = ChatCompletionRequest.model_validate({
        "model": "feature:x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
        "stream": True, "stream_options": {"include_usage": True}})
    streamed = to_payload(to_request(request), "gpt-4o-mini", stream=True)
    assert (streamed["model"], streamed["stream"], streamed["max_tokens"]) == ("gpt-4o-mini", True, 5)
    assert streamed["stream_options"] == {"include_usage": True}
    whole = to_payload(to_request(request), "gpt-4o-mini", stream=False)
    assert whole["stream"] is False and "stream_options" not in whole
    assert "temperature" not in whole  # only what the client sent


def test_sse_lines_become_chunks_until_done():
    stream = OpenAIStream()
    assert stream.feed_line(": keep-alive") == [] and stream.feed_line("") == []
    [delta] = stream.feed_line(CHUNK)
    assert delta.choices[0].text == "Hi" and not stream.done
    assert stream.feed_line("data: [DONE]") == [] and stream.done


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('data: {"error": {"message": "engine died", "type": "server_error"}}', "failed mid-stream: engine died"),
        ('data: {"error": "overloaded"}', "failed mid-stream: overloaded"),
        ('data: {"error": null}', "failed mid-stream: "),
        ("data: {not json", "sent a stream event that is not valid"),
        ('data: {"id": 1}', "sent a stream event that is not valid"),
    ],
)
def test_error_events_and_broken_events_raise(line, message):
    with pytest.raises(RunnerFailed, match=message):
        OpenAIStream().feed_line(line)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"error": {"message": "bad model", "type": "invalid_request_error"}}', "bad model"),
        ('{"error": "rate limited"}', "rate limited"),
        ('{"object": "error", "message": "older vLLM"}', "older vLLM"),
        ('{"detail": "not found"}', '{"detail": "not found"}'),
        ("<html>" + "x" * 300, "<html>" + "x" * 194),
    ],
)
def test_error_message_from_any_shape_of_body(body, message):
    assert error_message(body) == message
