"""Token counts for a request without answering it (Anthropic's `count_tokens`): routed like the request.

The routed tier's runner counts with its own tokenizer and chat template where it has one (llama.cpp
on Tier 3, vLLM's /tokenize on Tier 2). A hosted tier has no tokenizer to ask, so the count is an
estimate (a token per four characters of the rendered messages and tools) and says so. Counting runs
no model: it is admitted by the caller's key like any request, and leaves no ledger row.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from runners.request import Request
from runners.wire.openai_chat import message_json
from tiers import dispatch
from tiers.serving.records import Call

CHARS_PER_TOKEN = 4


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    exact: bool  # counted by the tier's own tokenizer, or estimated
    tier: int
    model: str


async def count_tokens(service, call: Call, request: Request) -> TokenCount:
    d = dispatch.dispatch(service.config.routing, service.runners, call.model, call.header_feature)
    await service.access.admit(call.client_key, d.route)
    counted = await d.runner.count_tokens(request)
    if counted is not None:
        return TokenCount(counted, True, d.runner.tier, d.runner.model_name)
    return TokenCount(estimate(request), False, d.runner.tier, d.runner.model_name)


def estimate(request: Request) -> int:
    rendered = json.dumps([message_json(m) for m in request.messages])
    rendered += json.dumps([t.model_dump(exclude_none=True) for t in request.tools])
    return math.ceil(len(rendered) / CHARS_PER_TOKEN)
