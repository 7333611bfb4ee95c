"""What a runner can do, declared as data, and the one check that refuses the rest before a request is sent.

Each runner class declares `capabilities`; `refuse_unsupported` turns a request that asks for more
into a 400 that names the parameter, so nothing the client asked for is silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass

from runners.errors import InvalidRequest
from runners.request import Request, TextPart


@dataclass(frozen=True)
class Capabilities:
    tools: bool = False  # function tools and tool_choice
    json_schema: bool = True  # response_format json_schema is enforced (grammar or provider), not just asked for
    logprobs: bool = True
    max_n: int = 1  # choices per request
    stream_n: bool = False  # n > 1 while streaming
    media: frozenset[str] = frozenset()  # content part types beyond text: image, audio, file
    prompt: bool = False  # plain text completion (no chat template)
    penalties: bool = True  # presence_penalty, frequency_penalty
    min_tokens: bool = False
    guided: bool = False  # vLLM's guided_json / guided_choice / guided_regex


def refuse_unsupported(request: Request, caps: Capabilities, where: str) -> None:
    """InvalidRequest naming the first parameter `where` (e.g. "tier 3 (llama.cpp)") cannot honour."""

    def refuse(param: str, what: str) -> InvalidRequest:
        return InvalidRequest(f"{param}: {where} {what}; remove it or route this feature to a tier that supports it",
                              param=param)

    if request.guided is not None and not caps.guided:
        field = request.guided.fields()[0]
        raise InvalidRequest(f"{field} is a vLLM extension that {where} does not support; use response_format "
                             "(json_schema) instead, which every tier honours", param=field)
    if request.n > caps.max_n:
        raise refuse("n", f"answers at most {caps.max_n} choice{'s' if caps.max_n > 1 else ''} per request")
    if request.n > 1 and request.stream and not caps.stream_n:
        raise refuse("n", "does not stream more than one choice")
    if request.logprobs and not caps.logprobs:
        raise refuse("logprobs", "does not return log probabilities")
    if request.top_logprobs and not caps.logprobs:
        raise refuse("top_logprobs", "does not return log probabilities")
    for param in ("presence_penalty", "frequency_penalty"):
        if getattr(request, param) is not None and not caps.penalties:
            raise refuse(param, "has no such sampling penalty")
    if request.min_tokens and not caps.min_tokens:
        raise refuse("min_tokens", "has no min_tokens")
    if (request.tools or request.tool_choice is not None) and not caps.tools:
        raise refuse("tools" if request.tools else "tool_choice", "does not call tools")
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema" and not caps.json_schema:
        raise refuse("response_format", "does not enforce json_schema output")
    if request.prompt is not None and not caps.prompt:
        raise refuse("prompt", "does not serve plain text completions")
    for i, message in enumerate(request.messages):
        for j, part in enumerate(message.content):
            if not isinstance(part, TextPart) and part.type not in caps.media:
                raise refuse(f"messages[{i}].content[{j}]", f"cannot read {part.type} content (a text-only model)")
