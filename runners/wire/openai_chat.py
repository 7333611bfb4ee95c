"""OpenAI chat completions <-> the internal request and answer, both ways.

Ingress (a client called our /v1/chat/completions): `to_request`, then `to_completion` or a
`ChunkWriter` for the answer. Egress (a runner forwards to an OpenAI-style server: vLLM, hosted
APIs): `to_payload`, then `from_completion` or `from_chunk`.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from runners.answer import Answer, Choice, ChoiceDelta, Delta, TokenLogprob, ToolCallDelta, Usage, new_id
from runners.errors import InvalidRequest
from runners.request import (
    AudioPart, FilePart, Guided, ImagePart, Message, Part, Request, ResponseFormat, TextPart, Tool, ToolCall,
    ToolChoice,
)
from runners.wire import openai_chat_protocol as wire


# -- ingress: a client's request -------------------------------------------------------------------
def to_request(body: wire.ChatCompletionRequest) -> Request:
    """The internal request for an OpenAI chat body; InvalidRequest names what has no meaning here."""
    if body.functions is not None or body.function_call is not None:
        legacy = "functions" if body.functions is not None else "function_call"
        raise InvalidRequest(f"{legacy} is OpenAI's deprecated function-calling API; send `tools` (and `tool_choice`) "
                             "instead", param=legacy)
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs=true", param="top_logprobs")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    guided = Guided(json=body.guided_json, choice=body.guided_choice, regex=body.guided_regex)
    return Request(
        messages=[_message(m) for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature, top_p=body.top_p, seed=body.seed, stop=[s for s in stop if s],
        presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty, min_tokens=body.min_tokens,
        n=body.n, response_format=_response_format(body.response_format),
        tools=[_tool(t) for t in body.tools or []], tool_choice=_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls, logprobs=body.logprobs, top_logprobs=body.top_logprobs,
        stream=body.stream, user=body.user, guided=guided if guided.fields() else None,
    )


def _message(m: wire.ChatMessage) -> Message:
    calls = [ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}") for c in m.tool_calls or []]
    return Message(role=m.role, content=_parts(m.content), name=m.name, tool_calls=calls, tool_call_id=m.tool_call_id)


def _parts(content: str | list | None) -> list[Part]:
    if content is None:
        return []
    if isinstance(content, str):
        return [TextPart(text=content)]
    parts: list[Part] = []
    for part in content:
        if isinstance(part, wire.TextContent):
            parts.append(TextPart(text=part.text))
        elif isinstance(part, wire.RefusalContent):
            parts.append(TextPart(text=part.refusal))
        elif isinstance(part, wire.ImageContent):
            parts.append(ImagePart(url=part.image_url.url, detail=part.image_url.detail))
        elif isinstance(part, wire.AudioContent):
            parts.append(AudioPart(data=part.input_audio.data, format=part.input_audio.format))
        else:
            parts.append(FilePart(file=part.file))
    return parts


def _response_format(fmt: wire.ResponseFormat | None) -> ResponseFormat | None:
    if fmt is None:
        return None
    spec = fmt.json_schema
    if spec is None:
        return ResponseFormat(type=fmt.type)
    return ResponseFormat(type=fmt.type, name=spec.name, schema=spec.schema_, strict=spec.strict,
                          description=spec.description)


def _tool(t: wire.ToolSpec) -> Tool:
    f = t.function
    return Tool(name=f.name, description=f.description, strict=f.strict,
                **({"parameters": f.parameters} if f.parameters is not None else {}))


def _tool_choice(choice: str | wire.NamedToolChoice | None) -> ToolChoice | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        return ToolChoice(mode=choice)
    return ToolChoice(mode="function", name=choice.function.name)


# -- ingress: our answer ---------------------------------------------------------------------------
def to_completion(answer: Answer) -> wire.ChatCompletion:
    return wire.ChatCompletion(
        id=f"chatcmpl-{answer.id}", created=answer.created, model=answer.model,
        choices=[wire.Choice(index=c.index, finish_reason=c.finish_reason, logprobs=_logprobs_out(c.logprobs),
                             message=wire.AssistantMessage(content=c.text, refusal=c.refusal,
                                                           tool_calls=[_call_out(t) for t in c.tool_calls] or None))
                 for c in answer.choices],
        usage=usage_out(answer.usage),
    )


def _call_out(call: ToolCall) -> wire.ToolCallOut:
    return wire.ToolCallOut(id=call.id, function=wire.FunctionCall(name=call.name, arguments=call.arguments))


def usage_out(usage: Usage) -> wire.Usage:
    return wire.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                      total_tokens=usage.total_tokens)


def _logprobs_out(tokens: list[TokenLogprob] | None) -> wire.ChoiceLogprobs | None:
    if tokens is None:
        return None
    return wire.ChoiceLogprobs(content=[wire.TokenLogprob.model_validate(t.model_dump()) for t in tokens])


class ChunkWriter:
    """Internal deltas -> OpenAI chunks of one stream: the role goes on each choice's first chunk."""

    _TEXT_MARK = '{"index":0,"delta":{"content":""}'

    def __init__(self, model: str, include_usage: bool):
        self.id, self.created, self.model = f"chatcmpl-{new_id()}", int(time.time()), model
        self.include_usage = include_usage
        self._started: set[int] = set()
        # A text chunk as the model path writes it, cut around its index and content (see `json_chunks`).
        sample = self._chunk([wire.ChunkChoice(index=0, delta=wire.Delta(content=""))]).model_dump_json()
        cut = sample.rindex(self._TEXT_MARK)
        self._text_head, self._text_tail = sample[:cut] + '{"index":', sample[cut + len(self._TEXT_MARK):]

    def json_chunks(self, delta: Delta) -> list[str]:
        """The delta's chunks as JSON. Most of a stream is one choice's next piece of text: that chunk is spliced
        into the sample above, the same bytes as the models write at a fortieth of their cost (a Tier 3 stream
        encodes one per token on the event loop, which shares two cores with llama.cpp)."""
        if len(delta.choices) == 1 and delta.usage is None:
            c = delta.choices[0]
            if (c.text is not None and c.finish_reason is None and not c.tool_calls and c.logprobs is None
                    and c.index in self._started):
                content = orjson.dumps(c.text).decode()
                return [f'{self._text_head}{c.index},"delta":{{"content":{content}}}{self._text_tail}']
        return [c.model_dump_json() for c in self.chunks(delta)]

    def _chunk(self, choices: list[wire.ChunkChoice], usage: wire.Usage | None = None) -> wire.ChatCompletionChunk:
        return wire.ChatCompletionChunk(id=self.id, created=self.created, model=self.model, choices=choices, usage=usage)

    def chunks(self, delta: Delta) -> list[wire.ChatCompletionChunk]:
        out = []
        for c in delta.choices:
            first = c.index not in self._started
            self._started.add(c.index)
            calls = [wire.ToolCallChunk(index=t.index, id=t.id, type="function" if t.id else None,
                                        function=wire.FunctionDelta(name=t.name, arguments=t.arguments))
                     for t in c.tool_calls] or None
            if c.text is None and calls is None and c.finish_reason is not None:  # a bare finish
                if first:
                    out.append(self._chunk([wire.ChunkChoice(index=c.index, delta=wire.Delta(role="assistant", content=""))]))
                out.append(self._chunk([wire.ChunkChoice(index=c.index, delta=wire.Delta(), finish_reason=c.finish_reason)]))
                continue
            content = c.text if c.text is not None or calls else ""
            body = wire.Delta(role="assistant" if first else None, content=content, tool_calls=calls)
            out.append(self._chunk([wire.ChunkChoice(index=c.index, delta=body, finish_reason=c.finish_reason,
                                                     logprobs=_logprobs_out(c.logprobs))]))
        if delta.usage is not None and self.include_usage:
            usage = usage_out(delta.usage)
            usage.cost_usd = delta.cost_usd
            out.append(self._chunk([], usage=usage))
        return out


# -- egress: forwarding to an OpenAI-style server -----------------------------------------------------
def to_payload(request: Request, model: str, stream: bool) -> dict[str, Any]:
    """The JSON body an OpenAI-compatible server expects for this request."""
    body: dict[str, Any] = {"model": model, "messages": [message_json(m) for m in request.messages], "stream": stream}
    for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "user", "top_logprobs",
                 "parallel_tool_calls", "min_tokens"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = request.stop
    if request.n != 1:
        body["n"] = request.n
    if request.logprobs:
        body["logprobs"] = True
    if stream:
        body["stream_options"] = {"include_usage": True}
    if request.response_format is not None:
        body["response_format"] = _format_out(request.response_format)
    if request.tools:
        body["tools"] = [{"type": "function", "function": t.model_dump(exclude_none=True)} for t in request.tools]
    if request.tool_choice is not None:
        choice = request.tool_choice
        body["tool_choice"] = ({"type": "function", "function": {"name": choice.name}} if choice.mode == "function"
                               else choice.mode)
    if request.guided is not None:
        body.update({f"guided_{k.rstrip('_')}": v for k, v in request.guided.model_dump(exclude_none=True).items()})
    return body


def message_json(m: Message) -> dict[str, Any]:
    """One message as OpenAI's JSON: the shape forwarded upstream, and the one the ledger stores prompts in."""
    out: dict[str, Any] = {"role": m.role}
    if all(isinstance(p, TextPart) for p in m.content):
        out["content"] = m.text() if m.content or not m.tool_calls else None
    else:
        out["content"] = [_part_out(p) for p in m.content]
    if m.name is not None:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [_call_out(c).model_dump() for c in m.tool_calls]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def _part_out(part: Part) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        return {"type": "image_url", "image_url": {"url": part.url, **({"detail": part.detail} if part.detail else {})}}
    if isinstance(part, AudioPart):
        return {"type": "input_audio", "input_audio": {"data": part.data, "format": part.format}}
    return {"type": "file", "file": part.file}


def _format_out(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec = {"name": fmt.name or "output", "schema": fmt.schema_ or {"type": "object"}}
    spec.update({k: v for k, v in (("strict", fmt.strict), ("description", fmt.description)) if v is not None})
    return {"type": "json_schema", "json_schema": spec}


def from_completion(completion: wire.ChatCompletion) -> Answer:
    """The internal answer for an OpenAI-style server's completion."""
    return Answer(
        id=completion.id.removeprefix("chatcmpl-"), created=completion.created, model=completion.model,
        choices=[Choice(index=c.index, text=c.message.content, refusal=c.message.refusal,
                        finish_reason="tool_calls" if c.finish_reason == "function_call" else c.finish_reason,
                        tool_calls=[ToolCall(id=t.id, name=t.function.name, arguments=t.function.arguments)
                                    for t in c.message.tool_calls or []],
                        logprobs=_logprobs_in(c.logprobs))
                 for c in completion.choices],
        usage=usage_in(completion.usage),
    )


def from_chunk(chunk: wire.ChatCompletionChunk) -> Delta:
    choices = []
    for c in chunk.choices:
        calls = [ToolCallDelta(index=t.index, id=t.id, name=t.function.name if t.function else None,
                               arguments=(t.function.arguments or "") if t.function else "")
                 for t in c.delta.tool_calls or []]
        reason = "tool_calls" if c.finish_reason == "function_call" else c.finish_reason
        choices.append(ChoiceDelta(index=c.index, text=c.delta.content, tool_calls=calls, finish_reason=reason,
                                   logprobs=_logprobs_in(c.logprobs)))
    return Delta(choices=choices, usage=usage_in(chunk.usage) if chunk.usage else None)


def usage_in(usage: wire.Usage | None) -> Usage:
    if usage is None:
        return Usage()
    return Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def _logprobs_in(logprobs: wire.ChoiceLogprobs | None) -> list[TokenLogprob] | None:
    if logprobs is None or logprobs.content is None:
        return None
    return [TokenLogprob.model_validate(t.model_dump()) for t in logprobs.content]
