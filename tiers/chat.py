"""One chat request end to end: route, answer, say how it was made, and leave its rows in the ledger.

Every request that reaches routing leaves rows: one per attempt when a tier answered, one error row
when none did. Streams are recorded when they end, whether they finish, fail or the client leaves.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from hardware.errors import TierRunnerError
from runners.errors import InvalidRequest
from runners.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    StreamOptions,
    Usage,
    chunks_from_completion,
)
from tiers.auth import Access, ClientKey
from tiers.cache.semantic import CachePolicy, SemanticCache, cacheable
from tiers.cache.store import Hit
from tiers.gateway import Dispatch, Gateway
from tiers.ledger.rows import LedgerRow, error_row, rows_for_attempts
from tiers.policy import Attempt, Outcome
from tiers.recorder import Recorder


@dataclass
class ChatReply:
    """What the HTTP layer sends: headers, and a completion or a primed chunk stream."""

    headers: dict[str, str]
    completion: ChatCompletion | None = None
    chunks: AsyncIterator[ChatCompletionChunk] | None = None
    summary: dict = field(default_factory=dict)  # fields for the request log line, filled as it goes


class ChatService:
    def __init__(self, gateway: Gateway, recorder: Recorder, access: Access, cache: SemanticCache | None = None,
                 max_messages: int = 256):
        self.gateway = gateway
        self.recorder = recorder
        self.access = access
        self.cache = cache
        self.max_messages = max_messages
        self._background: set[asyncio.Task] = set()

    async def handle(self, request_id: str, body: ChatCompletionRequest, header_feature: str | None,
                     client_key: ClientKey | None = None) -> ChatReply:
        started = time.perf_counter()
        summary: dict = {}
        client_key_id = client_key.id if client_key else None
        try:
            if len(body.messages) > self.max_messages:
                raise InvalidRequest(f"{len(body.messages)} messages is more than the {self.max_messages} allowed; "
                                     f"send a shorter conversation", param="messages")
            dispatch = self.gateway.dispatch(body, header_feature)
            summary["feature"] = dispatch.route.label
            self.access.admit(client_key, dispatch.route)
            self.recorder.check_budget(dispatch.route)
            policy = self._cache_policy(dispatch, body)
            if policy is not None:
                found = await self.cache.lookup(dispatch.route.feature, body, dispatch.runner.tier,
                                                dispatch.runner.model_name, policy, request_id)
                if found is not None:
                    return self._cache_hit(request_id, body, dispatch, started, client_key_id, summary, *found)
            if body.stream and not dispatch.gated:
                return await self._stream(request_id, body, dispatch, started, client_key, summary, policy)
            outcome = await self.gateway.complete(dispatch, body)
        except TierRunnerError as exc:
            self._record_failure(request_id, body, header_feature, exc, started, client_key_id, summary)
            raise
        rows = self._rows(request_id, body, dispatch, outcome, client_key_id, ttft_ms=None)
        self.recorder.record(rows)
        self.access.charge(client_key, sum(r.prompt_tokens + r.completion_tokens for r in rows))
        verdict = outcome.verdict
        if policy is not None and (verdict is None or verdict.passed):
            self._store_later(dispatch, body, policy, outcome.runner, outcome.completion, request_id)
        _summarize(summary, outcome.runner.tier, outcome.runner.model_name, outcome.completion.usage)
        summary["runner_ms"] = round(sum(attempt.latency_ms for attempt in outcome.attempts), 3)
        headers = _headers(dispatch, outcome.runner, outcome)
        headers["x-cost-usd"] = f"{sum(row.cost_usd for row in rows):.8f}"
        headers["x-cache"] = "miss" if policy is not None else "off"
        if body.stream:  # gated: the whole answer was checked before the first byte
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return ChatReply(headers, chunks=_replay(chunks_from_completion(outcome.completion, include_usage)),
                             summary=summary)
        return ChatReply(headers, completion=outcome.completion, summary=summary)

    # -- the semantic cache ------------------------------------------------------------------------
    def _cache_policy(self, dispatch: Dispatch, body: ChatCompletionRequest) -> CachePolicy | None:
        spec = dispatch.route.spec
        if self.cache is None or spec is None or spec.cache is None or not spec.cache.enabled:
            return None
        return spec.cache if cacheable(body, spec.cache) else None

    def _cache_hit(self, request_id: str, body: ChatCompletionRequest, dispatch: Dispatch, started: float,
                   client_key_id: str | None, summary: dict, completion: ChatCompletion, hit: Hit) -> ChatReply:
        """A hit costs no inference: its row has no tokens and no cost, and says how similar the match was."""
        runner = dispatch.runner
        latency_ms = (time.perf_counter() - started) * 1000
        fields = {"serving_tier": runner.tier, "runner": runner.kind, "model": runner.model_name,
                  "latency_ms": latency_ms, "cache_hit": True, "cache_similarity": hit.similarity}
        route = dispatch.route
        rows = rows_for_attempts(request_id, route.label, route.feature, route.tier, [fields],
                                 client_key_id=client_key_id, ttft_ms=latency_ms)
        self.recorder.record(rows)
        _summarize(summary, runner.tier, runner.model_name, None)
        summary["runner_ms"] = 0.0
        headers = _headers(dispatch, runner, None)
        headers.update({"x-cache": "hit", "x-cache-similarity": f"{hit.similarity:.4f}", "x-cost-usd": "0.00000000"})
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return ChatReply(headers, chunks=_replay(chunks_from_completion(completion, include_usage)), summary=summary)
        return ChatReply(headers, completion=completion, summary=summary)

    def _store_later(self, dispatch: Dispatch, body: ChatCompletionRequest, policy: CachePolicy, runner,
                     completion: ChatCompletion, request_id: str) -> None:
        """Answers that ended normally are cached (max_tokens is part of the key, so a `length` answer is what
        the same request would get again); embedding and storing happen after the response is sent."""
        if completion.choices[0].finish_reason not in ("stop", "length"):
            return
        task = asyncio.create_task(self.cache.store(dispatch.route.feature, body, runner.tier, runner.model_name,
                                                    policy, completion, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- streaming ---------------------------------------------------------------------------------
    async def _stream(self, request_id: str, body: ChatCompletionRequest, dispatch: Dispatch, started: float,
                      client_key: ClientKey | None, summary: dict, policy: CachePolicy | None) -> ChatReply:
        client_key_id = client_key.id if client_key else None
        client_wants_usage = bool(body.stream_options and body.stream_options.include_usage)
        upstream = self.gateway.stream(dispatch, body.model_copy(update={"stream_options": StreamOptions(include_usage=True)}))
        first = await anext(upstream)  # request errors surface here, before any byte is sent
        ttft_ms = (time.perf_counter() - started) * 1000
        runner = dispatch.runner
        summary.update(tier=runner.tier, model=runner.model_name)

        async def recorded() -> AsyncIterator[ChatCompletionChunk]:
            usage: Usage | None = None
            text: list[str] = []
            error: TierRunnerError | None = None
            finished = False
            finish_reason = None
            try:
                chunk: ChatCompletionChunk | None = first
                while chunk is not None:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if chunk.choices and chunk.choices[0].delta.content:
                        text.append(chunk.choices[0].delta.content)
                    if chunk.choices and chunk.choices[0].finish_reason:
                        finish_reason = chunk.choices[0].finish_reason
                    if chunk.usage is None or client_wants_usage:
                        yield chunk
                    chunk = await anext(upstream, None)
                finished = True
            except TierRunnerError as exc:
                error = exc
                raise
            finally:
                await upstream.aclose()
                attempt = Attempt(runner.tier, runner.model_name, "primary", usage=usage,
                                  latency_ms=(time.perf_counter() - started) * 1000)
                outcome = Outcome(completion=None, runner=runner, attempts=[attempt],  # type: ignore[arg-type]
                                  downgraded=dispatch.downgraded)
                error_type = None if finished else (error.code or error.error_type) if error else "client_disconnected"
                rows = self._rows(request_id, body, dispatch, outcome, client_key_id, ttft_ms=ttft_ms,
                                  completion_text="".join(text), error_type=error_type)
                self.recorder.record(rows)
                self.access.charge(client_key, usage.total_tokens if usage else 0)
                _summarize(summary, runner.tier, runner.model_name, usage)
                if error_type:
                    summary["error"] = error_type
                elif policy is not None and usage is not None and finish_reason:
                    whole = ChatCompletion(id=first.id, created=first.created, model=first.model, usage=usage,
                                           choices=[Choice(message=AssistantMessage(content="".join(text)),
                                                           finish_reason=finish_reason)])
                    self._store_later(dispatch, body, policy, runner, whole, request_id)

        headers = _headers(dispatch, runner, None)
        headers["x-cache"] = "miss" if policy is not None else "off"
        return ChatReply(headers, chunks=recorded(), summary=summary)

    # -- rows ---------------------------------------------------------------------------------
    def _rows(self, request_id: str, body: ChatCompletionRequest, dispatch: Dispatch, outcome: Outcome,
              client_key_id: str | None, *, ttft_ms: float | None, completion_text: str | None = None,
              error_type: str | None = None) -> list[LedgerRow]:
        route, spec = dispatch.route, dispatch.route.spec
        keep_text = spec is not None and spec.store_text is not None
        attempts = []
        for number, attempt in enumerate(outcome.attempts, start=1):
            last = number == len(outcome.attempts)
            usage = attempt.usage or Usage(prompt_tokens=0, completion_tokens=0, total_tokens=0)
            price = self.gateway.price(attempt.tier)
            fields = {
                "serving_tier": attempt.tier, "runner": self.gateway.runners[attempt.tier].kind, "model": attempt.model,
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "latency_ms": attempt.latency_ms, "cost_usd": price.cost_usd(usage.prompt_tokens, usage.completion_tokens),
                "escalated": attempt.role == "escalation", "downgraded": outcome.downgraded and last,
                "error_type": error_type if last else None,
            }
            if attempt.verdict is not None:
                fields.update(gate=attempt.verdict.gate, gate_passed=attempt.verdict.passed,
                              gate_reason=attempt.verdict.reason)
            if keep_text and last:
                answer = completion_text if completion_text is not None else outcome.completion.choices[0].message.content
                fields.update(prompt_text=json.dumps([m.model_dump(exclude_none=True) for m in body.messages]),
                              completion_text=answer,
                              text_expires_at=time.time() + spec.store_text.retention_days * 86400)
            attempts.append(fields)
        return rows_for_attempts(request_id, route.label, route.feature, route.tier if route.feature else None,
                                 attempts, client_key_id=client_key_id, ttft_ms=ttft_ms)

    def _record_failure(self, request_id: str, body: ChatCompletionRequest, header_feature: str | None,
                        exc: TierRunnerError, started: float, client_key_id: str | None, summary: dict) -> None:
        label = summary.get("feature") or (body.model if body.model.startswith(("feature:", "tier:")) else
                                           f"feature:{header_feature}" if header_feature else body.model)
        feature = label.removeprefix("feature:") if label.startswith("feature:") else None
        spec = self.gateway.routing.features.get(feature) if feature else None
        row = error_row(request_id, label[:80], feature if spec else None, spec.tier if spec else None, exc,
                        status=exc.status_code, error_type=exc.code or exc.error_type,
                        latency_ms=(time.perf_counter() - started) * 1000, client_key_id=client_key_id)
        self.recorder.record([row])
        summary["error"] = row.error_type


def _summarize(summary: dict, tier: int, model: str, usage: Usage | None) -> None:
    summary.update(tier=tier, model=model)
    if usage is not None:
        summary.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def _headers(dispatch: Dispatch, runner, outcome: Outcome | None) -> dict[str, str]:
    """How the answer was made: tier, model, feature, and for gated features the cascade."""
    downgraded = outcome.downgraded if outcome else dispatch.downgraded
    headers = {
        "x-tier": str(runner.tier),
        "x-model": runner.model_name,
        "x-feature": dispatch.route.label,
        "x-downgraded": "true" if downgraded else "false",
        "x-escalated": "true" if outcome and outcome.escalated else "false",
        "cache-control": "no-cache",
    }
    if outcome is not None:
        headers["x-attempts"] = ",".join(a.summary for a in outcome.attempts)
        if outcome.verdict is not None:
            headers["x-gate"] = outcome.verdict.header
    return headers


async def _replay(chunks: list[ChatCompletionChunk]) -> AsyncIterator[ChatCompletionChunk]:
    for chunk in chunks:
        yield chunk
