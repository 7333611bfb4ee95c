"""OpenAI Responses (stateless) <-> the internal request and answer.

`instructions` becomes a system message first; `input` items become messages in order: function_call
items the calls of an assistant turn (consecutive ones share it), function_call_output items tool
messages. `text.format` is the response format, `max_output_tokens` max_tokens. The answer is a
Response whose `output` holds a message item (the text) and a function_call item per call; a
`length` finish makes it `incomplete` with reason `max_output_tokens`. The stream is
`runners/wire/openai_responses_stream.py`'s.
"""

from __future__ import annotations

from typing import Any

from runners.answer import Answer, Usage, new_id
from runners.errors import InvalidRequest
from runners.request import ImagePart, Message, Part, Request, ResponseFormat, TextPart, Tool, ToolCall, ToolChoice
from runners.wire import openai_responses_protocol as wire

STATELESS = ("this gateway's Responses API is stateless: send the whole conversation as `input` (messages, "
             "function_call and function_call_output items) with store false or absent")


def to_request(body: wire.ResponsesRequest) -> Request:
    """The internal request for a Responses body; InvalidRequest names what has no meaning here."""
    for field, refused in (("previous_response_id", body.previous_response_id is not None),
                           ("conversation", body.conversation is not None), ("store", body.store is True),
                           ("background", body.background is True)):
        if refused:
            raise InvalidRequest(f"{field}: {STATELESS}", param=field)
    messages = [Message(role="system", content=[TextPart(text=body.instructions)])] if body.instructions else []
    if isinstance(body.input, str):
        messages.append(Message(role="user", content=[TextPart(text=body.input)]))
    else:
        for item in body.input:
            _add(messages, item)
    return Request(messages=messages, max_tokens=body.max_output_tokens, temperature=body.temperature,
                   top_p=body.top_p, stream=body.stream, user=body.user, parallel_tool_calls=body.parallel_tool_calls,
                   response_format=_format((body.text.format if body.text else None)),
                   tools=[Tool(name=t.name, description=t.description, strict=t.strict,
                               **({"parameters": t.parameters} if t.parameters is not None else {}))
                          for t in body.tools or []],
                   tool_choice=_tool_choice(body.tool_choice))


def _add(messages: list[Message], item: wire.InputItem) -> None:
    if isinstance(item, wire.FunctionCallItem):
        call = ToolCall(id=item.call_id, name=item.name, arguments=item.arguments)
        if messages and messages[-1].role == "assistant":  # the calls of the turn whose text came just before
            messages[-1].tool_calls.append(call)
        else:
            messages.append(Message(role="assistant", tool_calls=[call]))
    elif isinstance(item, wire.FunctionCallOutputItem):
        text = item.output if isinstance(item.output, str) else "".join(p.text for p in item.output)
        messages.append(Message(role="tool", tool_call_id=item.call_id, content=[TextPart(text=text)]))
    else:
        content = [TextPart(text=item.content)] if isinstance(item.content, str) else [_part(p) for p in item.content]
        messages.append(Message(role=item.role, content=content))


def _part(part: Any) -> Part:
    if isinstance(part, wire.InputImage):
        return ImagePart(url=part.image_url, detail=part.detail)
    if isinstance(part, wire.Refusal):
        return TextPart(text=part.refusal)
    return TextPart(text=part.text)


def _format(fmt: wire.TextFormat | None) -> ResponseFormat | None:
    if fmt is None:
        return None
    if fmt.type == "json_schema" and (fmt.schema_ is None or not fmt.name):
        raise InvalidRequest("text.format: type json_schema needs `name` and `schema`", param="text.format")
    return ResponseFormat(type=fmt.type, name=fmt.name, schema=fmt.schema_, strict=fmt.strict,
                          description=fmt.description)


def _tool_choice(choice: str | wire.NamedFunctionChoice | None) -> ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return ToolChoice(mode=choice)
    return ToolChoice(mode="function", name=choice.name)


# -- our answer -----------------------------------------------------------------------------------------
def item_id(prefix: str) -> str:
    return f"{prefix}_{new_id()}"


def output_items(answer: Answer) -> list[wire.OutMessage | wire.OutFunctionCall]:
    choice = answer.first
    items: list[wire.OutMessage | wire.OutFunctionCall] = []
    if choice.text:
        items.append(wire.OutMessage(id=item_id("msg"), content=[wire.OutputTextPart(text=choice.text)]))
    items += [wire.OutFunctionCall(id=item_id("fc"), call_id=c.id, name=c.name, arguments=c.arguments)
              for c in choice.tool_calls]
    return items


def response(body: wire.ResponsesRequest, model: str, response_id: str, created: int,
             output: list[wire.OutMessage | wire.OutFunctionCall], finish: str | None,
             usage: Usage | None) -> wire.Response:
    """The Response object: what was asked echoed back, the output, and the status its finish gives."""
    if finish is None:
        status, incomplete = "in_progress", None
    elif finish in ("length", "content_filter"):
        reason = "max_output_tokens" if finish == "length" else "content_filter"
        status, incomplete = "incomplete", wire.IncompleteDetails(reason=reason)
    else:
        status, incomplete = "completed", None
    text = body.text.model_dump(exclude_none=True, by_alias=True) if body.text and body.text.format else None
    return wire.Response(
        id=response_id, created_at=created, status=status, incomplete_details=incomplete,
        instructions=body.instructions, model=model, output=output,
        parallel_tool_calls=body.parallel_tool_calls is not False, metadata=body.metadata or {},
        tool_choice=body.tool_choice.model_dump() if isinstance(body.tool_choice, wire.NamedFunctionChoice)
        else body.tool_choice or "auto",
        tools=[t.model_dump() for t in body.tools or []], temperature=body.temperature,
        top_p=body.top_p, max_output_tokens=body.max_output_tokens, **({"text": text} if text else {}),
        usage=usage_out(usage) if usage is not None else None)


def to_response(body: wire.ResponsesRequest, answer: Answer) -> wire.Response:
    return response(body, answer.model, f"resp_{answer.id}", answer.created, output_items(answer),
                    answer.first.finish_reason, answer.usage)


def usage_out(usage: Usage) -> wire.ResponseUsage:
    return wire.ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                      total_tokens=usage.total_tokens)
