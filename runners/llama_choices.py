"""The engine's events for n choices as internal deltas: text, tool calls read out of it, finishes, one usage.

Each choice has its own tool-call parser when the request may call tools, so a stream sends text until a
call starts and then the call as an id and name followed by argument fragments; a choice that made calls
and ended on its own finishes with `tool_calls`. The n choices share one prompt: usage counts the prompt
once and the completions of all choices together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from runners.answer import ChoiceDelta, Delta, TokenLogprob, ToolCallDelta, TopLogprob, Usage
from runners.llama import Finished, Piece, TokenInfo
from runners.llama_tools import ToolCallParser, ToolPlan


async def choice_deltas(events: AsyncIterator[Piece | Finished], n: int, plan: ToolPlan | None,
                        logprobs: bool) -> AsyncIterator[Delta]:
    parsers = {i: ToolCallParser(plan.tools) for i in range(n)} if plan is not None else {}
    prompt_tokens = completion_tokens = 0
    async for event in events:
        i = event.index
        parser = parsers.get(i)
        if isinstance(event, Piece):
            tokens = _logprobs(event.tokens) if logprobs else None
            if parser is None:
                yield Delta(choices=[ChoiceDelta(index=i, text=event.text, logprobs=tokens)])
                continue
            pieces = [_delta(i, e) for e in parser.feed(event.text)]
            if tokens:
                pieces = pieces or [ChoiceDelta(index=i)]
                pieces[0].logprobs = tokens
            if pieces:
                yield Delta(choices=pieces)
            continue
        reason = event.reason
        if parser is not None:
            held = [_delta(i, e) for e in parser.finish()]
            if held:
                yield Delta(choices=held)
            if parser.result().calls and reason == "stop":
                reason = "tool_calls"
        yield Delta(choices=[ChoiceDelta(index=i, finish_reason=reason)])
        prompt_tokens = event.prompt_tokens
        completion_tokens += event.completion_tokens
    yield Delta(usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens))


def _delta(index: int, event: tuple) -> ChoiceDelta:
    kind = event[0]
    if kind == "text":
        return ChoiceDelta(index=index, text=event[1])
    if kind == "call":
        _, number, call_id, name = event
        return ChoiceDelta(index=index, tool_calls=[ToolCallDelta(index=number, id=call_id, name=name)])
    _, number, fragment = event
    return ChoiceDelta(index=index, tool_calls=[ToolCallDelta(index=number, arguments=fragment)])


def _logprobs(tokens: list[TokenInfo]) -> list[TokenLogprob]:
    return [TokenLogprob(token=t.text, logprob=t.logprob, bytes=list(t.token_bytes),
                         top_logprobs=[TopLogprob(token=s, bytes=list(b), logprob=lp) for s, b, lp in t.top])
            for t in tokens]
