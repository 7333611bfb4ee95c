"""OpenAI text completions <-> the internal request and answer, both ways.

Ingress (a client called our /v1/completions): `to_requests` (one internal request per prompt, each a
plain-text `Request.prompt`: no chat template), then `to_completion` or a `ChunkWriter`. Egress (the
vLLM runner forwards a prompt to its server's /v1/completions): `to_payload`, `from_completion`,
`from_chunk`. Integer `logprobs` is the internal `logprobs` + `top_logprobs`.
"""

from __future__ import annotations

import time
from typing import Any

from runners.answer import Answer, Choice, ChoiceDelta, Delta, TokenLogprob, TopLogprob, Usage, new_id
from runners.errors import InvalidRequest
from runners.request import Request
from runners.wire import openai_chat, openai_completions_protocol as wire


# -- ingress: a client's request -------------------------------------------------------------------
def to_requests(body: wire.CompletionRequest) -> list[Request]:
    """One internal request per prompt; InvalidRequest names what has no meaning here."""
    if body.echo:
        raise InvalidRequest("echo: the prompt is not echoed back; send echo: false (the default)", param="echo")
    if wire.token_array(body.prompt):
        raise InvalidRequest("prompt: token-array prompts are not supported (each tier tokenizes with its own "
                             "model); send the text", param="prompt")
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise InvalidRequest("prompt: give a text, or a list of at least one", param="prompt")
    if body.stream and len(prompts) > 1:
        raise InvalidRequest("prompt: a stream answers one prompt; send a list of prompts without stream",
                             param="prompt")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return [Request(prompt=p, max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                    seed=body.seed, stop=[s for s in stop if s], n=body.n, presence_penalty=body.presence_penalty,
                    frequency_penalty=body.frequency_penalty, logprobs=body.logprobs is not None,
                    top_logprobs=body.logprobs, stream=body.stream, user=body.user)
            for p in prompts]


# -- ingress: our answer ---------------------------------------------------------------------------
def to_completion(answers: list[Answer], n: int) -> wire.Completion:
    """Prompt i's choice j is choice i * n + j, as OpenAI numbers them; usage is summed over the prompts."""
    first = answers[0]
    choices = [wire.CompletionChoice(index=i * n + c.index, text=c.text or "", finish_reason=_finish(c.finish_reason),
                           logprobs=Offsets().logprobs(c.logprobs))
               for i, answer in enumerate(answers) for c in answer.choices]
    usage = sum((a.usage for a in answers), Usage())
    return wire.Completion(id=f"cmpl-{first.id}", created=first.created, model=first.model, choices=choices,
                           usage=openai_chat.usage_out(usage))


def _finish(reason: str) -> str:
    return reason if reason in ("stop", "length", "content_filter") else "stop"


class Offsets:
    """Each token's character offset in the completion so far (OpenAI's `text_offset`)."""

    def __init__(self) -> None:
        self.at = 0

    def logprobs(self, tokens: list[TokenLogprob] | None) -> wire.Logprobs | None:
        if tokens is None:
            return None
        out = wire.Logprobs(top_logprobs=[])
        for t in tokens:
            out.tokens.append(t.token)
            out.token_logprobs.append(t.logprob)
            out.top_logprobs.append({top.token: top.logprob for top in t.top_logprobs})
            out.text_offset.append(self.at)
            self.at += len(t.token)
        return out


class ChunkWriter:
    """Internal deltas -> completion chunks of one stream; a last chunk with usage when asked for."""

    def __init__(self, model: str, include_usage: bool):
        self.id, self.created, self.model = f"cmpl-{new_id()}", int(time.time()), model
        self.include_usage = include_usage
        self._offsets: dict[int, Offsets] = {}

    def chunks(self, delta: Delta) -> list[wire.Completion]:
        out = []
        for c in delta.choices:
            if c.text is None and c.finish_reason is None:
                continue
            logprobs = self._offsets.setdefault(c.index, Offsets()).logprobs(c.logprobs)
            choice = wire.CompletionChoice(index=c.index, text=c.text or "", logprobs=logprobs,
                                 finish_reason=_finish(c.finish_reason) if c.finish_reason else None)
            out.append(wire.Completion(id=self.id, created=self.created, model=self.model, choices=[choice]))
        if delta.usage is not None and self.include_usage:
            usage = openai_chat.usage_out(delta.usage)
            usage.cost_usd = delta.cost_usd
            out.append(wire.Completion(id=self.id, created=self.created, model=self.model, choices=[], usage=usage))
        return out


# -- egress: forwarding a prompt to an OpenAI-style server (vLLM) -------------------------------------
def to_payload(request: Request, model: str, stream: bool) -> dict[str, Any]:
    """The chat payload's sampling fields, with `prompt` for `messages` and integer `logprobs`."""
    body = openai_chat.to_payload(request.model_copy(update={"messages": []}), model, stream)
    del body["messages"]
    body["prompt"] = request.prompt
    if body.pop("logprobs", False):
        body["logprobs"] = body.pop("top_logprobs", 0) or 0
    return body


def from_completion(data: Any) -> Answer:
    completion = wire.Completion.model_validate(data)
    return Answer(id=completion.id.removeprefix("cmpl-"), created=completion.created, model=completion.model,
                  choices=[Choice(index=c.index, text=c.text, finish_reason=c.finish_reason or "stop",
                                  logprobs=_logprobs_in(c.logprobs)) for c in completion.choices],
                  usage=openai_chat.usage_in(completion.usage))


def from_chunk(data: Any) -> Delta:
    chunk = wire.Completion.model_validate(data)
    choices = [ChoiceDelta(index=c.index, text=c.text, finish_reason=c.finish_reason, logprobs=_logprobs_in(c.logprobs))
               for c in chunk.choices]
    return Delta(choices=choices, usage=openai_chat.usage_in(chunk.usage) if chunk.usage else None)


def _logprobs_in(logprobs: wire.Logprobs | None) -> list[TokenLogprob] | None:
    if logprobs is None:
        return None
    tops = logprobs.top_logprobs or [None] * len(logprobs.tokens)
    return [TokenLogprob(token=token, logprob=lp if lp is not None else 0.0,
                         top_logprobs=[TopLogprob(token=k, logprob=v) for k, v in (top or {}).items()])
            for token, lp, top in zip(logprobs.tokens, logprobs.token_logprobs, tops)]
