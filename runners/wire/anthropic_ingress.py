"""Anthropic Messages ingress: a client's /v1/messages body -> the internal request, our answer -> a Message
or its stream of events. The mirror image of `runners/wire/anthropic.py` (egress), sharing its tables.

- `system` (a string or text blocks) becomes a system message; `tool_use` blocks become the assistant's
  tool calls; `tool_result` blocks become tool messages, placed before the rest of their user turn (as
  OpenAI-style conversations need them right after the call). A result with `is_error` is prefixed
  with "Error: ", the one way an internal tool message can say so.
- `tool_choice` maps through `TOOL_CHOICE` (reversed), `disable_parallel_tool_use` to
  `parallel_tool_calls: false`, finish reasons to stop reasons through `FINISH_TO_STOP_REASON`.
- `stop_reason` is `end_turn` when a stop sequence ended the answer too (runners report one finish
  reason, "stop", for both), and `stop_sequence` is then null.
"""

from __future__ import annotations

import json
from typing import Any

from runners.answer import Answer, Delta, Usage, new_id
from runners.errors import InvalidRequest, RunnerFailed
from runners.request import (
    ImagePart, Message, Part, Request, ResponseFormat, TextPart, Tool, ToolCall, ToolChoice,
)
from runners.wire import anthropic_protocol as wire
from runners.wire.anthropic import FINISH_TO_STOP_REASON, TOOL_CHOICE, image_url

INTERNAL_TOOL_CHOICE = {anthropic: internal for internal, anthropic in TOOL_CHOICE.items()}


# -- a client's request ----------------------------------------------------------------------------------
def to_request(body: wire.MessagesRequest) -> Request:
    """The internal request for a Messages body; InvalidRequest names what has no meaning here."""
    if body.top_k is not None:
        raise InvalidRequest("top_k: no tier samples by top_k; remove it (temperature and top_p are honoured)",
                             param="top_k")
    config = body.output_config
    if config is not None and config.effort is not None:
        raise InvalidRequest("output_config.effort: no tier has an effort setting; remove it",
                             param="output_config.effort")
    fmt = config.format if config is not None else None
    return Request(messages=_messages(body.system, body.messages), max_tokens=body.max_tokens,
                   temperature=body.temperature, top_p=body.top_p, stop=[s for s in body.stop_sequences or [] if s],
                   user=body.metadata.user_id if body.metadata else None, stream=body.stream,
                   response_format=ResponseFormat(type="json_schema", name="output", schema=fmt.schema_) if fmt else None,
                   **tools(body.tools, body.tool_choice))


def count_request(body: wire.CountTokensRequest) -> Request:
    """What `count_tokens` counts: the prompt the same Messages request would be rendered into."""
    return Request(messages=_messages(body.system, body.messages), **tools(body.tools, body.tool_choice))


def tools(specs: list[wire.AnthropicTool] | None, choice: wire.AnthropicToolChoice | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"tools": [Tool(name=t.name, description=t.description, parameters=t.input_schema)
                                        for t in specs or []]}
    if choice is not None:
        if choice.type == "tool" and not choice.name:
            raise InvalidRequest("tool_choice: type 'tool' needs the `name` of the tool to call", param="tool_choice")
        fields["tool_choice"] = ToolChoice(mode=INTERNAL_TOOL_CHOICE[choice.type],
                                           name=choice.name if choice.type == "tool" else None)
        if choice.disable_parallel_tool_use:
            fields["parallel_tool_calls"] = False
    return fields


def _messages(system: str | list[wire.TextBlock] | None, turns: list[wire.InputMessage]) -> list[Message]:
    out: list[Message] = []
    if system:
        text = system if isinstance(system, str) else "\n\n".join(b.text for b in system)
        out.append(Message(role="system", content=[TextPart(text=text)]))
    for i, turn in enumerate(turns):
        if isinstance(turn.content, str):
            out.append(Message(role=turn.role, content=[TextPart(text=turn.content)]))
        elif turn.role == "assistant":
            out.append(_assistant(turn.content, i))
        else:
            out.extend(_user(turn.content))
    return out


def _assistant(blocks: list, index: int) -> Message:
    parts: list[Part] = []
    calls: list[ToolCall] = []
    for j, block in enumerate(blocks):
        if isinstance(block, wire.TextBlock):
            parts.append(TextPart(text=block.text))
        elif isinstance(block, wire.ToolUseBlock):
            calls.append(ToolCall(id=block.id, name=block.name, arguments=json.dumps(block.input)))
        else:
            raise InvalidRequest(f"messages[{index}].content[{j}]: an assistant turn holds text and tool_use blocks, "
                                 f"not {block.type}", param=f"messages[{index}].content[{j}]")
    return Message(role="assistant", content=parts, tool_calls=calls)


def _user(blocks: list) -> list[Message]:
    results = [Message(role="tool", tool_call_id=b.tool_use_id, content=_result_parts(b))
               for b in blocks if isinstance(b, wire.ToolResultBlock)]
    rest = [_part(b) for b in blocks if not isinstance(b, wire.ToolResultBlock)]
    return results + ([Message(role="user", content=rest)] if rest or not results else [])


def _result_parts(block: wire.ToolResultBlock) -> list[Part]:
    parts = [TextPart(text=block.content)] if isinstance(block.content, str) else [_part(b) for b in block.content]
    if block.is_error:
        parts.insert(0, TextPart(text="Error: "))
    return parts


def _part(block) -> Part:
    if isinstance(block, wire.TextBlock):
        return TextPart(text=block.text)
    if isinstance(block, wire.ImageBlock):
        return ImagePart(url=image_url(block.source.model_dump()))
    raise InvalidRequest(f"a user turn holds text, image and tool_result blocks, not {block.type}", param="messages")


# -- our answer -----------------------------------------------------------------------------------------
def to_message(answer: Answer) -> wire.Message:
    choice = answer.first
    content: list[wire.TextBlockOut | wire.ToolUseBlockOut] = [wire.TextBlockOut(text=choice.text)] if choice.text else []
    content += [wire.ToolUseBlockOut(id=c.id, name=c.name, input=tool_input(c)) for c in choice.tool_calls]
    return wire.Message(id=f"msg_{answer.id}", model=answer.model, content=content,
                        stop_reason=FINISH_TO_STOP_REASON[choice.finish_reason], usage=usage_out(answer.usage))


def tool_input(call: ToolCall) -> dict[str, Any]:
    """A tool_use block's input is an object: arguments that do not parse as one cannot be sent as Anthropic's."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise RunnerFailed(f"the model called {call.name!r} with arguments that are not a JSON object "
                           f"({call.arguments[:80]!r}); give the feature a tool_call gate so such calls are retried")
    return value


def usage_out(usage: Usage) -> wire.AnthropicUsage:
    return wire.AnthropicUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens)


def error_body(status: int, message: str) -> dict[str, Any]:
    return wire.AnthropicError(error=wire.AnthropicErrorBody(type=wire.error_type(status), message=message)).model_dump()


class EventWriter:
    """Internal deltas -> Anthropic stream events, in Anthropic's order: message_start, then for each content
    block content_block_start, its deltas (text_delta or input_json_delta) and content_block_stop, then
    message_delta (stop reason and usage) and message_stop."""

    def __init__(self, model: str):
        self.id, self.model = f"msg_{new_id()}", model
        self.started = False
        self.blocks = 0  # content blocks opened so far
        self.open: str | int | None = None  # "text", a tool call's index, or None
        self.stop_reason: str | None = None
        self.usage: Usage | None = None

    def start(self) -> list[tuple[str, dict]]:
        message = wire.Message(id=self.id, model=self.model, content=[], stop_reason=None,
                               usage=wire.AnthropicUsage(input_tokens=0, output_tokens=0))
        return [("message_start", {"type": "message_start", "message": message.model_dump()})]

    def events(self, delta: Delta) -> list[tuple[str, dict]]:
        out = [] if self.started else self.start()
        self.started = True
        for c in delta.choices:
            if c.text:
                if self.open != "text":
                    out += self._open({"type": "text", "text": ""}, "text")
                out.append(self._delta({"type": "text_delta", "text": c.text}))
            for piece in c.tool_calls:
                if self.open != piece.index:
                    out += self._open({"type": "tool_use", "id": piece.id or f"toolu_{new_id()[:24]}",
                                       "name": piece.name or "", "input": {}}, piece.index)
                if piece.arguments:
                    out.append(self._delta({"type": "input_json_delta", "partial_json": piece.arguments}))
            if c.finish_reason is not None:
                out += self._close()
                self.stop_reason = FINISH_TO_STOP_REASON[c.finish_reason]
        if delta.usage is not None:
            self.usage = delta.usage
        return out

    def finish(self) -> list[tuple[str, dict]]:
        """After the last delta: the open block's stop, message_delta with the stop reason and usage, message_stop."""
        out = ([] if self.started else self.start()) + self._close()
        usage = self.usage or Usage()
        out.append(("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": self.stop_reason or "end_turn", "stop_sequence": None},
                                      "usage": {"input_tokens": usage.prompt_tokens,
                                                "output_tokens": usage.completion_tokens}}))
        out.append(("message_stop", {"type": "message_stop"}))
        return out

    def _open(self, block: dict, key: str | int) -> list[tuple[str, dict]]:
        out = self._close()
        self.open = key
        out.append(("content_block_start", {"type": "content_block_start", "index": self.blocks,
                                            "content_block": block}))
        return out

    def _delta(self, delta: dict) -> tuple[str, dict]:
        return "content_block_delta", {"type": "content_block_delta", "index": self.blocks, "delta": delta}

    def _close(self) -> list[tuple[str, dict]]:
        if self.open is None:
            return []
        self.open = None
        self.blocks += 1
        return [("content_block_stop", {"type": "content_block_stop", "index": self.blocks - 1})]
