"""One internal request end to end: route, keys and budgets, cache, answer, say how it was made, record it.

Wire adapters (tiers/api/) call `Service.handle(call, request)` and turn the `Reply` into their JSON;
everything here happens once, the same way, for every API. Streams are recorded when they end,
whether they finish, fail or the client leaves (tiers/serving/streaming.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hardware.errors import TierRunnerError
from runners.answer import Answer, Delta, deltas_from_answer, replay
from runners.errors import InvalidRequest
from runners.request import Request
from runners.request_checks import check_request
from tiers import dispatch, request_defaults
from tiers.auth import Access
from tiers.budgets import reservation_usd
from tiers.cache.semantic import CachePolicy, SemanticCache, cacheable
from tiers.cache.store import Hit
from tiers.dispatch import Dispatch
from tiers.errors import CacheUnavailable
from tiers.live_config import LiveConfig
from tiers.policy import gates as policy_gates
from tiers.recorder import Recorder
from tiers.serving import counting, records
from tiers.serving.records import Call, Summary
from tiers.serving.streaming import RecordedStream
from tiers.shadow import ShadowScorer

log = logging.getLogger("tier_runner.serving")


@dataclass
class Reply:
    """What the edge sends: headers, and a whole answer or a primed stream of deltas."""

    headers: dict[str, str]
    model: str
    answer: Answer | None = None
    deltas: AsyncIterator[Delta] | None = None
    summary: Summary = field(default_factory=Summary)


def said(reply: Reply, overridden: list[str]) -> Reply:
    """The reply, telling the client which of its values the feature's request block replaced."""
    reply.headers.update(request_defaults.overridden_header(overridden))
    return reply


class Service:
    def __init__(self, config: LiveConfig, recorder: Recorder, access: Access, cache: SemanticCache | None = None,
                 max_messages: int = 256, default_max_tokens: int = 512, shadow: ShadowScorer | None = None):
        self.config = config
        self.shadow = shadow
        self.recorder = recorder
        self.access = access
        self.cache = cache
        self.max_messages = max_messages
        self.default_max_tokens = default_max_tokens
        self._background: set[asyncio.Task] = set()

    @property
    def runners(self):
        return self.config.runners

    async def handle(self, call: Call, request: Request) -> Reply:
        started = time.perf_counter()
        summary = Summary()
        try:
            if len(request.messages) > self.max_messages:
                raise InvalidRequest(f"{len(request.messages)} messages is more than the {self.max_messages} allowed; "
                                     f"send a shorter conversation", param="messages")
            check_request(request)
            d = dispatch.dispatch(self.config.routing, self.runners, call.model, call.header_feature)
            summary.fields["feature"] = d.route.label
            request, overridden = request_defaults.apply(d.route.spec and d.route.spec.request, request,
                                                         self.default_max_tokens)
            await self.access.admit(call.client_key, d.route)
            await self.recorder.admit(d.route, call.client_key, call.request_id, reservation_usd(
                self.runners.price(d.runner.tier), counting.estimate(request), request.max_tokens, request.n))
            policy = self._cache_policy(d, request)
            cache_state = "off" if policy is None else "miss"
            if policy is not None:
                try:
                    found = await self.cache.lookup(d.route.feature, request, d.runner.tier, d.runner.model_name,
                                                    policy, call.request_id, call.client_key_id)
                except CacheUnavailable:  # served by the model, and shown on /ready and /metrics
                    found, policy, cache_state = None, None, "error"
                if found is not None:
                    return said(self._cache_hit(call, request, d, started, summary, *found), overridden)
            if request.stream and not policy_gates(d, request):
                reply = said(await self._stream(call, request, d, started, summary, policy), overridden)
                reply.headers["x-cache"] = cache_state
                return reply
            outcome = await dispatch.complete(d, request, self.runners)
        except TierRunnerError as exc:
            self._record_failure(call, summary, exc, started)
            raise
        rows = records.attempt_rows(call, request, d, outcome, self.runners, ttft_ms=None)
        self.recorder.record(rows)
        if self.shadow is not None:
            self.shadow.offer(d.route, request, outcome.answer, rows)
        self.access.charge(call.client_key, sum(r.prompt_tokens + r.completion_tokens for r in rows))
        verdict = outcome.verdict
        if policy is not None and (verdict is None or verdict.passed):
            self.store_later(d, request, policy, outcome.runner, outcome.answer, call)
        summary.served(outcome.runner.tier, outcome.runner.model_name, outcome.answer.usage)
        summary.fields["runner_ms"] = round(sum(a.latency_ms for a in outcome.attempts), 3)
        headers = records.headers_for(d, outcome.runner, outcome)
        headers["x-cost-usd"] = f"{sum(row.cost_usd for row in rows):.8f}"
        headers["x-cache"] = cache_state
        headers.update(request_defaults.overridden_header(overridden))
        reply = Reply(headers, outcome.runner.model_name, summary=summary)
        if request.stream:  # gated: the whole answer was checked before the first byte
            reply.deltas = replay(deltas_from_answer(outcome.answer))
        else:
            reply.answer = outcome.answer
        return reply

    # -- the semantic cache ------------------------------------------------------------------------
    def _cache_policy(self, d: Dispatch, request: Request) -> CachePolicy | None:
        spec = d.route.spec
        if self.cache is None or spec is None or spec.cache is None or not spec.cache.enabled:
            return None
        return spec.cache if cacheable(request, spec.cache) else None

    def _cache_hit(self, call: Call, request: Request, d: Dispatch, started: float, summary: Summary,
                   answer: Answer, hit: Hit) -> Reply:
        latency_ms = (time.perf_counter() - started) * 1000
        self.recorder.record(records.cache_hit_rows(call, d, latency_ms, hit.similarity))
        summary.served(d.runner.tier, d.runner.model_name, None)
        summary.fields["runner_ms"] = 0.0
        headers = records.headers_for(d, d.runner, None)
        headers.update({"x-cache": "hit", "x-cache-similarity": f"{hit.similarity:.4f}", "x-cost-usd": "0.00000000"})
        reply = Reply(headers, d.runner.model_name, summary=summary)
        if request.stream:
            reply.deltas = replay(deltas_from_answer(answer))
        else:
            reply.answer = answer
        return reply

    def store_later(self, d: Dispatch, request: Request, policy: CachePolicy, runner, answer: Answer,
                    call: Call) -> None:
        """Answers that ended normally are cached (max_tokens is part of the key, so a `length` answer is what
        the same request would get again); embedding and storing happen after the response is sent."""
        if any(c.finish_reason not in ("stop", "length", "tool_calls") for c in answer.choices):
            return
        task = asyncio.create_task(self.cache.store(d.route.feature, request, runner.tier, runner.model_name,
                                                    policy, answer, call.request_id, call.client_key_id))
        self._background.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.warning("storing an answer in the cache failed: %s: %s", exc.__class__.__name__, exc)

    # -- streaming ---------------------------------------------------------------------------------
    async def _stream(self, call: Call, request: Request, d: Dispatch, started: float, summary: Summary,
                      policy: CachePolicy | None) -> Reply:
        d, first, upstream = await dispatch.stream(d, request, self.runners)
        ttft_ms = (time.perf_counter() - started) * 1000
        summary.fields.update(tier=d.runner.tier, model=d.runner.model_name)
        deltas = RecordedStream(self, call, request, d, first, upstream, started, ttft_ms, summary, policy)
        headers = records.headers_for(d, d.runner, None)
        if first.replica:
            headers["x-replica"] = first.replica
        return Reply(headers, d.runner.model_name, deltas=deltas, summary=summary)

    def _record_failure(self, call: Call, summary: Summary, exc: TierRunnerError, started: float) -> None:
        row = records.failure_row(call, self.config.routing, summary.fields.get("feature"), exc,
                                  (time.perf_counter() - started) * 1000)
        self.recorder.record([row])
        summary.fields["error"] = row.error_type
