"""An ungated stream passed through to the client, and recorded when it ends.

Whether it finishes, fails mid-way or the client leaves, the request leaves its row: tokens and
cost from the usage the runner reported, and an error type when it did not finish. The final usage
delta also carries the cost, so a streaming client learns what the answer cost.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
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


class RecordedStream:
    """The client's stream: deltas pass through, and `aclose()` records the request exactly once.

    A class rather than a generator because a generator that was never started (the client left
    between the response headers and the first event) never runs its `finally`: the edge calls
    `aclose()` on every path, so the row is written and the budget reservation settled regardless.
    """

    def __init__(self, service: Service, call: Call, request: Request, d: Dispatch, first: Delta,
                 upstream: AsyncIterator[Delta], started: float, ttft_ms: float, summary: Summary,
                 policy: CachePolicy | None):
        self.service, self.call, self.request, self.d = service, call, request, d
        self.upstream, self.started, self.ttft_ms, self.summary, self.policy = upstream, started, ttft_ms, summary, policy
        self.whole = AnswerBuilder(d.runner.model_name)
        self._first: Delta | None = first
        self._error: TierRunnerError | None = None
        self._finished = False
        self._recorded = False

    def __aiter__(self) -> RecordedStream:
        return self

    async def __anext__(self) -> Delta:
        if self._recorded:
            raise StopAsyncIteration
        if self._first is not None:
            delta, self._first = self._first, None
        else:
            try:
                delta = await anext(self.upstream)
            except StopAsyncIteration:
                self._finished = True
                await self.aclose()
                raise
            except TierRunnerError as exc:
                self._error = exc
                await self.aclose()
                raise
        self.whole.add(delta)
        if delta.usage is not None:
            usage, runner = delta.usage, self.d.runner
            cost = self.service.runners.price(runner.tier).cost_usd(usage.prompt_tokens, usage.completion_tokens)
            delta = replace(delta, cost_usd=cost)
        return delta

    async def aclose(self) -> None:
        if self._recorded:
            return
        self._recorded = True
        try:
            await self.upstream.aclose()
        finally:
            self._record()

    def _record(self) -> None:
        service, d, runner, whole = self.service, self.d, self.d.runner, self.whole
        usage = whole.usage
        answer = whole.answer()
        attempt = Attempt(runner.tier, runner.model_name, "primary", runner.kind, usage=usage,
                          latency_ms=(time.perf_counter() - self.started) * 1000, tool_calls=answer.tool_call_count,
                          replica=whole.replica)
        outcome = Outcome(answer=None, runner=runner, attempts=[attempt], downgraded=d.downgraded)
        error = self._error
        error_type = None if self._finished else (error.code or error.error_type) if error else "client_disconnected"
        rows = records.attempt_rows(self.call, self.request, d, outcome, service.runners, ttft_ms=self.ttft_ms,
                                    answer_text=whole.text_so_far(), error_type=error_type)
        service.recorder.record(rows)
        if service.shadow is not None and not error_type:
            service.shadow.offer(d.route, self.request, answer, rows)
        service.access.charge(self.call.client_key, usage.total_tokens if usage else 0)
        self.summary.served(runner.tier, runner.model_name, usage)
        if error_type:
            self.summary.fields["error"] = error_type
        elif self.policy is not None and usage is not None and whole.finished:
            service.store_later(d, self.request, self.policy, runner, answer, self.call)
