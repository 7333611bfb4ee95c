"""Anthropic Messages <-> the internal request and answer: pure translation, no I/O.

Egress (the hosted runner calls Anthropic's API): system and developer messages become the top-level
`system`; consecutive turns of one role are merged (Anthropic alternates user and assistant); tool
calls become `tool_use` blocks and tool messages `tool_result` blocks in a user turn; `stop` becomes
`stop_sequences`; `max_tokens` is required there, so the runner's default fills it in; `seed` and
`user` are dropped (best-effort or informational in OpenAI's API too); `response_format: json_object`
becomes a system instruction. What Anthropic cannot do is refused by the runner's capabilities
(`CAPABILITIES`) before translation, and a `temperature` above 1 here.

The block and stop-reason tables below are the ones the Messages endpoint (ingress,
`runners/wire/anthropic_ingress.py`) uses too.
"""

from __future__ import annotations

import json
from typing import Any

from runners.answer import Answer, Choice, ChoiceDelta, Delta, FinishReason, ToolCallDelta, Usage
from runners.capabilities import Capabilities
from runners.errors import InvalidRequest, RunnerFailed
from runners.request import ImagePart, Message, Request, TextPart, ToolCall

JSON_INSTRUCTION = "Reply with a single valid JSON object and nothing else."

CAPABILITIES = Capabilities(tools=True, json_schema=False, logprobs=False, max_n=1, media=frozenset({"image"}),
                            penalties=False)

STOP_REASONS: dict[str, FinishReason] = {  # Anthropic stop_reason -> internal finish reason
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
FINISH_TO_STOP_REASON: dict[str, str] = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                                         "content_filter": "refusal"}
TOOL_CHOICE = {"auto": "auto", "required": "any", "function": "tool", "none": "none"}  # internal mode -> Anthropic


def finish_reason(stop_reason: str | None) -> FinishReason:
    return STOP_REASONS.get(stop_reason or "end_turn", "stop")


def usage_from(usage: dict[str, Any]) -> Usage:
    """Anthropic counts cached prompt tokens separately; OpenAI's prompt_tokens includes them."""
    prompt = sum(int(usage.get(k) or 0) for k in
                 ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
    return Usage(prompt_tokens=prompt, completion_tokens=int(usage.get("output_tokens") or 0))


def image_source(part: ImagePart) -> dict[str, Any]:
    """A data: URL becomes a base64 source, anything else a URL source."""
    if part.url.startswith("data:") and ";base64," in part.url:
        media_type, data = part.url[5:].split(";base64,", 1)
        return {"type": "base64", "media_type": media_type, "data": data}
    return {"type": "url", "url": part.url}


def image_url(source: dict[str, Any]) -> str:
    """The inverse of `image_source`: a base64 source becomes a data: URL, a URL source its URL."""
    if source.get("type") == "base64":
        return f"data:{source['media_type']};base64,{source['data']}"
    return source["url"]


# -- egress: our request as a Messages API body ---------------------------------------------------------
def to_anthropic(request: Request, model: str, default_max_tokens: int, stream: bool) -> dict[str, Any]:
    """The Messages API body for a request; raises InvalidRequest for what has no translation."""
    if request.temperature is not None and request.temperature > 1:
        raise InvalidRequest("temperature: the Anthropic Messages API accepts 0 to 1", param="temperature")
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            if message.text():
                system.append(message.text())
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message, i)
        if not blocks:
            continue  # Anthropic rejects empty turns
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_object":
        system.append(JSON_INSTRUCTION)
    if not turns:
        raise InvalidRequest("messages: the Anthropic Messages API needs at least one non-empty user or assistant "
                             "message", param="messages")
    body: dict[str, Any] = {"model": model, "messages": turns, "max_tokens": request.max_tokens or default_max_tokens}
    if system:
        body["system"] = "\n\n".join(system)
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.tools:
        body["tools"] = [{"name": t.name, "input_schema": t.parameters,
                          **({"description": t.description} if t.description else {})} for t in request.tools]
    if request.tool_choice is not None or request.parallel_tool_calls is False:
        choice = request.tool_choice
        body["tool_choice"] = {"type": TOOL_CHOICE[choice.mode] if choice else "auto"}
        if choice is not None and choice.mode == "function":
            body["tool_choice"]["name"] = choice.name
        if request.parallel_tool_calls is False and body["tool_choice"]["type"] != "none":
            body["tool_choice"]["disable_parallel_tool_use"] = True
    if stream:
        body["stream"] = True
    return body


def _blocks(message: Message, index: int) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": message.text()}]
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append({"type": "image", "source": image_source(part)})
    for j, call in enumerate(message.tool_calls):
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise InvalidRequest(f"messages[{index}].tool_calls[{j}].function.arguments is not a JSON object; Anthropic "
                                 "needs each tool call's input as an object", param=f"messages[{index}].tool_calls")
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return blocks


# -- egress: the Messages API's answer as ours -----------------------------------------------------------
def from_anthropic(message: dict[str, Any]) -> Answer:
    """The internal answer for a Messages API response: text blocks joined, tool_use blocks as calls."""
    try:
        blocks = message["content"]
        text = "".join(block.get("text", "") for block in blocks if block.get("type") == "text")
        calls = [ToolCall(id=b["id"], name=b["name"], arguments=json.dumps(b.get("input") or {}))
                 for b in blocks if b.get("type") == "tool_use"]
        return Answer(id=message["id"], model=message["model"],
                      choices=[Choice(text=text if text or not calls else None, tool_calls=calls,
                                      finish_reason=finish_reason(message.get("stop_reason")))],
                      usage=usage_from(message.get("usage") or {}))
    except (KeyError, TypeError, AttributeError) as exc:
        raise RunnerFailed(f"the Anthropic API answered something that is not a message (missing {exc})") from None


class StreamTranslator:
    """Turns Messages API stream events into internal deltas, one event at a time; `usage` comes last."""

    def __init__(self) -> None:
        self.usage: dict[str, Any] = {}
        self.done = False
        self._calls: dict[int, int] = {}  # content block index -> tool call index

    def feed_line(self, line: str) -> list[Delta]:
        """One server-sent-events line; the event name is also inside the data, so `event:` lines are skipped."""
        if not line.startswith("data:"):
            return []
        return self.feed(json.loads(line.removeprefix("data:").strip()))

    def feed(self, event: dict[str, Any]) -> list[Delta]:
        kind = event.get("type")
        if kind == "message_start":
            self.usage.update((event.get("message") or {}).get("usage") or {})
            return [Delta(choices=[ChoiceDelta(text="")])]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                number = self._calls[event.get("index", 0)] = len(self._calls)
                call = ToolCallDelta(index=number, id=_optional_str(block, "id"), name=_optional_str(block, "name"))
                return [Delta(choices=[ChoiceDelta(tool_calls=[call])])]
            text = _str(block, "text") if block.get("type") == "text" else ""
            return [Delta(choices=[ChoiceDelta(text=text)])] if text else []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "input_json_delta":
                number = self._calls.get(event.get("index", 0), 0)
                piece = ToolCallDelta(index=number, arguments=_str(delta, "partial_json"))
                return [Delta(choices=[ChoiceDelta(tool_calls=[piece])])]
            text = _str(delta, "text") if delta.get("type") == "text_delta" else ""
            return [Delta(choices=[ChoiceDelta(text=text)])] if text else []
        if kind == "message_delta":
            self.usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
            reason = finish_reason((event.get("delta") or {}).get("stop_reason"))
            return [Delta(choices=[ChoiceDelta(finish_reason=reason)])]
        if kind == "message_stop":
            self.done = True
            return [Delta(usage=usage_from(self.usage))]
        if kind == "error":
            error = event.get("error") or {}
            raise RunnerFailed(f"the Anthropic API failed mid-stream: {error.get('type', 'error')}: "
                               f"{error.get('message', '')}")
        return []  # ping, content_block_stop, and block types we do not ask for


def _str(event: dict[str, Any], key: str) -> str:
    """A text field of an event ("" when absent or null); anything else is an event that is not valid (ValueError)."""
    value = event.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key} is {type(value).__name__}, not a string")
    return value


def _optional_str(event: dict[str, Any], key: str) -> str | None:
    return _str(event, key) if event.get(key) is not None else None
