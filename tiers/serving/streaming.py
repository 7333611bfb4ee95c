"""An ungated stream passed through to the client, and recorded when it ends.

Whether it finishes, fails mid-way or the client leaves, the request leaves its row: tokens and
cost from the usage the runner reported, and an error type when it did not finish. The final usage
delta also carries the cost, so a streaming client learns what the answer cost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from hardware.errors import TierRunnerError
from runners.answer import AnswerBuilder, Delta
from runners.request import Request
from tiers.cache.semantic import CachePolicy
from tiers.dispatch import Dispatch
from tiers.policy import Attempt, Outcome
from tiers.serving import records
from tiers.serving.records import Call, Summary

if TYPE_CHECKING:
    from tiers.serving.service import Service


async def recorded_stream(service: Service, call: Call, request: Request, d: Dispatch, first: Delta,
                          upstream: AsyncIterator[Delta], started: float, ttft_ms: float, summary: Summary,
                          policy: CachePolicy | None) -> AsyncIterator[Delta]:
    runner = d.runner
    whole = AnswerBuilder(runner.model_name)
    error: TierRunnerError | None = None
    finished = False
    try:
        delta: Delta | None = first
        while delta is not None:
            whole.add(delta)
            if delta.usage is not None:
                usage = delta.usage
                cost = service.runners.price(runner.tier).cost_usd(usage.prompt_tokens, usage.completion_tokens)
                delta = delta.model_copy(update={"cost_usd": cost})
            yield delta
            delta = await anext(upstream, None)
        finished = True
    except TierRunnerError as exc:
        error = exc
        raise
    finally:
        await upstream.aclose()
        usage = whole.usage
        answer = whole.answer()
        attempt = Attempt(runner.tier, runner.model_name, "primary", runner.kind, usage=usage,
                          latency_ms=(time.perf_counter() - started) * 1000, tool_calls=answer.tool_call_count)
        outcome = Outcome(answer=None, runner=runner, attempts=[attempt], downgraded=d.downgraded)
        error_type = None if finished else (error.code or error.error_type) if error else "client_disconnected"
        rows = records.attempt_rows(call, request, d, outcome, service.runners, ttft_ms=ttft_ms,
                                    answer_text=whole.text_so_far(), error_type=error_type)
        service.recorder.record(rows)
        if service.shadow is not None and not error_type:
            service.shadow.offer(d.route, request, answer, rows)
        service.access.charge(call.client_key, usage.total_tokens if usage else 0)
        summary.served(runner.tier, runner.model_name, usage)
        if error_type:
            summary.fields["error"] = error_type
        elif policy is not None and usage is not None and whole.finished:
            service.store_later(d, request, policy, runner, answer, call)
