"""Shadow scoring of live traffic: a sampled share of a feature's answers asked again of another tier, after the
response has gone, and compared (tiers/shadow_compare.py). The client never waits for it.

`offer` is the one call the serving layer makes, where it records an answer (whole or streamed). It draws the
sample and puts the job on the feature's bounded queue, or drops it when the queue is full (counted in
`tier_shadow_samples{result="dropped"}`); one worker per feature works the queue. A shadow tier that is down,
slow or failing costs its own row an error, never a client request anything.

Each shadow call leaves one ledger row: `route` is `shadow:<feature>`, `shadow_of` names the feature and
`shadow_agreed` says whether the answers agreed; its `feature` and `client_key_id` stay empty, so its cost is
never charged to the feature's budget or a key's spend cap, and the audit shows it apart. The row's request
id and parent are the shadowed request's, so a shadow row joins the answer it scored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from hardware.errors import TierRunnerError
from runners.answer import Answer
from runners.errors import TierUnavailable
from runners.request import Request
from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.store import Ledger
from tiers.routing import Route
from tiers.shadow_compare import agree, judge_request, judge_verdict
from tiers.tier_runners import TierRunners

log = logging.getLogger("tier_runner.shadow")
TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Job:
    route: Route
    request: Request
    answer_text: str
    request_id: str
    parent: LedgerRow
    api: str


class ShadowScorer:
    def __init__(self, runners: Callable[[], TierRunners], ledger: Ledger, registry: CollectorRegistry,
                 draw: Callable[[], float] = random.random):
        self.runners, self.ledger, self.draw = runners, ledger, draw
        self.samples = Counter("tier_shadow_samples", "Shadow samples by result: agree, disagree, error (no "
                               "comparison) or dropped (the feature's shadow queue was full)", ("feature", "result"),
                               registry=registry)
        self.cost = Counter("tier_shadow_cost_usd", "Spend on shadow calls, apart from the features' own",
                            ("feature", "tier", "model"), registry=registry)
        self._queues: dict[str, asyncio.Queue[Job]] = {}
        self._workers: dict[str, asyncio.Task] = {}

    def offer(self, route: Route, request: Request, answer: Answer | None, rows: list[LedgerRow]) -> None:
        """Maybe queue this answered request for shadow scoring; never raises, never waits."""
        try:
            self._offer(route, request, answer, rows)
        except Exception:  # the answer is already on its way: a shadow bug must not touch it
            log.exception("shadow sampling failed for %s", route.label)

    def _offer(self, route: Route, request: Request, answer: Answer | None, rows: list[LedgerRow]) -> None:
        spec = route.spec.shadow if route.spec is not None else None
        if spec is None or answer is None or not rows or rows[-1].error_type or rows[-1].gate_passed is False:
            return
        if rows[-1].serving_tier == spec.tier or rows[-1].cache_hit:  # the shadow tier itself answered: no check
            return
        if answer.tool_call_count or answer.first.text is None or self.draw() >= spec.sample:
            return
        feature = route.feature
        queue = self._queues.get(feature)
        if queue is None or queue.maxsize != spec.queue:
            queue = self._queues[feature] = asyncio.Queue(maxsize=spec.queue)
        job = Job(route, request.model_copy(update={"stream": False, "n": 1, "logprobs": False, "top_logprobs": None}),
                  answer.first.text, rows[-1].request_id, rows[-1], rows[-1].api)
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            self.samples.labels(feature, "dropped").inc()
            return
        worker = self._workers.get(feature)
        if worker is None or worker.done():
            self._workers[feature] = asyncio.create_task(self._work(feature), name=f"shadow-{feature}")

    def queued(self, feature: str) -> int:
        queue = self._queues.get(feature)
        return queue.qsize() if queue is not None else 0

    async def stop(self) -> None:
        for task in self._workers.values():
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
        self._workers.clear()

    async def _work(self, feature: str) -> None:
        while True:
            queue = self._queues[feature]
            try:
                job = queue.get_nowait()
            except asyncio.QueueEmpty:
                return  # the next offer starts a worker again
            try:
                await self._score(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the feature's shadow for good
                log.exception("shadow scoring of %s failed", feature)

    async def _score(self, job: Job) -> None:
        spec, feature = job.route.spec.shadow, job.route.feature
        runner = self.runners().get(spec.tier)
        started = time.perf_counter()
        reply, agreed, error = None, None, None
        try:
            if runner is None or not runner.serving():
                raise TierUnavailable(f"shadow tier {spec.tier} is not serving")
            asked = judge_request(job.request, job.answer_text) if spec.compare == "judge" else job.request
            reply = await asyncio.wait_for(runner.complete(asked), TIMEOUT_S)
            text = reply.first.text or ""
            agreed = judge_verdict(text) if spec.compare == "judge" else agree(spec, job.answer_text, text)
            if agreed is None:
                error = "shadow_not_comparable"
        except TierRunnerError as exc:
            error = exc.code or exc.error_type
        except TimeoutError:
            error = "shadow_timeout"
        except Exception as exc:  # anything else the shadow tier does wrong is its row's error, not a crash
            log.warning("shadow call for %s failed: %s: %s", feature, exc.__class__.__name__, exc)
            error = "shadow_failed"
        self._record(job, runner, reply, agreed, error, (time.perf_counter() - started) * 1000)

    def _record(self, job: Job, runner, reply: Answer | None, agreed: bool | None, error: str | None,
                latency_ms: float) -> None:
        spec, feature = job.route.spec.shadow, job.route.feature
        usage = reply.usage if reply is not None else None
        prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        cost = self.runners().price(spec.tier).cost_usd(prompt, completion) if usage else 0.0
        model = runner.model_name if runner is not None else None
        row = LedgerRow(
            attempt_id=new_attempt_id(), request_id=job.request_id, parent_id=job.parent.attempt_id,
            attempt_no=job.parent.attempt_no + 1, final=False, ts=time.time(), route=f"shadow:{feature}",
            api=job.api, feature=None, feature_spec=job.route.spec.spec_hash, declared_tier=job.route.tier,
            serving_tier=spec.tier, runner=runner.kind if runner is not None else None, model=model,
            prompt_tokens=prompt, completion_tokens=completion, latency_ms=latency_ms, cost_usd=cost,
            gate=f"shadow:{spec.compare}", error_type=error, http_status=200 if error is None else 503,
            shadow_of=feature, shadow_agreed=agreed)
        self.ledger.record([row])
        self.samples.labels(feature, "error" if agreed is None else "agree" if agreed else "disagree").inc()
        self.cost.labels(feature, str(spec.tier), model or "").inc(cost)
