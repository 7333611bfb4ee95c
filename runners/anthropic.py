"""OpenAI chat completions <-> Anthropic Messages API: pure translation, no I/O.

Requests: system and developer messages become the top-level `system`; consecutive turns of one role
are merged (Anthropic alternates user and assistant); `stop` becomes `stop_sequences`; `max_tokens`
is required there, so the runner's default fills it in; `seed` and `user` are dropped (best-effort or
informational in OpenAI's API too); `response_format: json_object` becomes a system instruction.
What Anthropic cannot do is a 400 naming the parameter: `logprobs`, `top_logprobs`, `presence_penalty`,
`frequency_penalty`, `response_format: json_schema`, and a `temperature` above 1.
"""

from __future__ import annotations

import json
from typing import Any

from runners.errors import InvalidRequest, RunnerFailed
from runners.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    Usage,
    now,
)

JSON_INSTRUCTION = "Reply with a single valid JSON object and nothing else."

FINISH_REASONS: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}


def _unsupported(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"{param}: {why} on the Anthropic Messages API; remove it or route this feature to an "
                          f"OpenAI-compatible tier", param=param)


TRANSLATED = {"model", "messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed",
              "stream", "stream_options", "response_format", "logprobs", "top_logprobs", "n", "user",
              "presence_penalty", "frequency_penalty"}


def to_anthropic(request: ChatCompletionRequest, model: str, default_max_tokens: int, stream: bool) -> dict[str, Any]:
    """The Messages API body for an OpenAI request; raises InvalidRequest for what has no translation."""
    for param in sorted(request.model_fields_set - TRANSLATED):
        if getattr(request, param, None) is not None:
            raise _unsupported(param, "this parameter has no translation")
    if request.logprobs or request.top_logprobs:
        raise _unsupported("logprobs" if request.logprobs else "top_logprobs", "log probabilities are not returned")
    for param in ("presence_penalty", "frequency_penalty"):
        if getattr(request, param) is not None:
            raise _unsupported(param, "there is no such sampling penalty")
    if request.temperature is not None and request.temperature > 1:
        raise InvalidRequest("temperature: the Anthropic Messages API accepts 0 to 1", param="temperature")
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema":
        raise _unsupported("response_format", "json_schema output is not enforced")

    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in request.messages:
        text = message.text()
        if message.role in ("system", "developer"):
            if text:
                system.append(text)
            continue
        if not text:
            continue  # Anthropic rejects empty turns
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"].append({"type": "text", "text": text})
        else:
            turns.append({"role": message.role, "content": [{"type": "text", "text": text}]})
    if fmt is not None and fmt.type == "json_object":
        system.append(JSON_INSTRUCTION)
    if not turns:
        raise InvalidRequest("messages: the Anthropic Messages API needs at least one non-empty user or assistant "
                             "message", param="messages")

    body: dict[str, Any] = {"model": model, "messages": turns,
                            "max_tokens": request.token_limit() or default_max_tokens}
    if system:
        body["system"] = "\n\n".join(system)
    if request.stop_list():
        body["stop_sequences"] = request.stop_list()
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if stream:
        body["stream"] = True
    return body


def finish_reason(stop_reason: str | None) -> FinishReason:
    return FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def usage_from(usage: dict[str, Any]) -> Usage:
    """Anthropic counts cached prompt tokens separately; OpenAI's prompt_tokens includes them."""
    prompt = sum(int(usage.get(k) or 0) for k in
                 ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
    completion = int(usage.get("output_tokens") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def from_anthropic(message: dict[str, Any]) -> ChatCompletion:
    """An OpenAI chat completion from a Messages API response; text blocks are joined, others ignored."""
    try:
        text = "".join(block.get("text", "") for block in message["content"] if block.get("type") == "text")
        return ChatCompletion(
            id=f"chatcmpl-{message['id']}",
            created=now(),
            model=message["model"],
            choices=[Choice(message=AssistantMessage(content=text), finish_reason=finish_reason(message.get("stop_reason")))],
            usage=usage_from(message.get("usage") or {}),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise RunnerFailed(f"the Anthropic API answered something that is not a message (missing {exc})") from None


class StreamTranslator:
    """Turns Messages API stream events into OpenAI chunks, one event at a time."""

    def __init__(self, include_usage: bool):
        self.include_usage = include_usage
        self.id = ""
        self.model = ""
        self.created = now()
        self.usage: dict[str, Any] = {}
        self.done = False

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> ChatCompletionChunk:
        return ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def feed_line(self, line: str) -> list[ChatCompletionChunk]:
        """One server-sent-events line; the event name is also inside the data, so `event:` lines are skipped."""
        if not line.startswith("data:"):
            return []
        return self.feed(json.loads(line.removeprefix("data:").strip()))

    def feed(self, event: dict[str, Any]) -> list[ChatCompletionChunk]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.id, self.model = f"chatcmpl-{message.get('id', '')}", message.get("model", "")
            self.usage.update(message.get("usage") or {})
            return [self._chunk([ChunkChoice(delta=Delta(role="assistant", content=""))])]
        if kind in ("content_block_start", "content_block_delta"):
            block = event.get("content_block") or event.get("delta") or {}
            text = block.get("text", "") if block.get("type") in ("text", "text_delta") else ""
            return [self._chunk([ChunkChoice(delta=Delta(content=text))])] if text else []
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = finish_reason((event.get("delta") or {}).get("stop_reason"))
            return [self._chunk([ChunkChoice(delta=Delta(), finish_reason=reason)])]
        if kind == "message_stop":
            self.done = True
            return [self._chunk([], usage=usage_from(self.usage))] if self.include_usage else []
        if kind == "error":
            error = event.get("error") or {}
            raise RunnerFailed(f"the Anthropic API failed mid-stream: {error.get('type', 'error')}: "
                               f"{error.get('message', '')}")
        return []  # ping, content_block_stop, and block types we do not ask for
