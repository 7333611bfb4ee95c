"""What a request leaves behind: its ledger rows, its response headers and its log-line fields.

Every request that reaches routing leaves rows: one per attempt when a tier answered, one error row
when none did.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from hardware.errors import TierRunnerError
from runners.answer import Usage
from runners.base import Runner
from runners.request import Request
from runners.wire.openai_chat import message_json
from tiers.auth import ClientKey
from tiers.dispatch import Dispatch
from tiers.ledger.rows import LedgerRow, error_row, rows_for_attempts
from tiers.policy import Outcome
from tiers.routing import RoutingTable
from tiers.tier_runners import TierRunners


@dataclass(frozen=True)
class Call:
    """What the edge knows about a request besides what to generate."""

    request_id: str
    api: str  # the wire API it came in on: chat, messages, responses, completions
    model: str  # as the client named it: feature:<name>, tier:<n>, or anything with an X-Feature header
    header_feature: str | None = None
    client_key: ClientKey | None = None

    @property
    def client_key_id(self) -> str | None:
        return self.client_key.id if self.client_key else None


@dataclass
class Summary:
    """Fields for the request's log line, filled as it goes (never prompt or answer text)."""

    fields: dict = field(default_factory=dict)

    def served(self, tier: int, model: str, usage: Usage | None) -> None:
        self.fields.update(tier=tier, model=model)
        if usage is not None:
            self.fields.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens)


def attempt_rows(call: Call, request: Request, d: Dispatch, outcome: Outcome, runners: TierRunners, *,
                 ttft_ms: float | None, answer_text: str | None = None, error_type: str | None = None) -> list[LedgerRow]:
    route, spec = d.route, d.route.spec
    keep_text = spec is not None and spec.store_text is not None
    attempts = []
    for number, attempt in enumerate(outcome.attempts, start=1):
        last = number == len(outcome.attempts)
        usage = attempt.usage or Usage()
        price = runners.price(attempt.tier)
        fields = {
            "serving_tier": attempt.tier, "runner": attempt.runner, "model": attempt.model,
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "latency_ms": attempt.latency_ms, "cost_usd": price.cost_usd(usage.prompt_tokens, usage.completion_tokens),
            "escalated": attempt.role == "escalation", "downgraded": outcome.downgraded and last,
            "error_type": error_type if last else None, "api": call.api, "tool_calls": attempt.tool_calls,
            "replica": attempt.replica,
            "feature_spec": spec.spec_hash if spec is not None else None,
        }
        if attempt.verdict is not None:
            fields.update(gate=attempt.verdict.gate, gate_passed=attempt.verdict.passed,
                          gate_reason=attempt.verdict.reason, gate_spec=spec.gate_hash if spec is not None else None)
        if keep_text and last:
            text = answer_text if answer_text is not None else (outcome.answer.first.text or "")
            fields.update(prompt_text=_prompt_text(request), completion_text=text,
                          text_expires_at=time.time() + spec.store_text.retention_days * 86400)
        attempts.append(fields)
    return rows_for_attempts(call.request_id, route.label, route.feature, route.tier if route.feature else None,
                             attempts, client_key_id=call.client_key_id, ttft_ms=ttft_ms)


def cache_hit_rows(call: Call, d: Dispatch, latency_ms: float, similarity: float) -> list[LedgerRow]:
    """A hit costs no inference: its row has no tokens and no cost, and says how similar the match was."""
    runner = d.runner
    fields = {"serving_tier": runner.tier, "runner": runner.kind, "model": runner.model_name, "api": call.api,
              "latency_ms": latency_ms, "cache_hit": True, "cache_similarity": similarity,
              "feature_spec": d.route.spec.spec_hash if d.route.spec is not None else None}
    return rows_for_attempts(call.request_id, d.route.label, d.route.feature, d.route.tier, [fields],
                             client_key_id=call.client_key_id, ttft_ms=latency_ms)


def failure_row(call: Call, routing: RoutingTable, label: str | None, exc: TierRunnerError,
                latency_ms: float) -> LedgerRow:
    model = call.model
    label = label or (model if model.startswith(("feature:", "tier:")) else
                      f"feature:{call.header_feature}" if call.header_feature else model)
    feature = label.removeprefix("feature:") if label.startswith("feature:") else None
    spec = routing.features.get(feature) if feature else None
    return error_row(call.request_id, label[:80], feature if spec else None, spec.tier if spec else None, exc,
                     status=exc.status_code, error_type=exc.code or exc.error_type, latency_ms=latency_ms,
                     client_key_id=call.client_key_id, api=call.api)


def headers_for(d: Dispatch, runner: Runner, outcome: Outcome | None) -> dict[str, str]:
    """How the answer was made: tier, model, feature, and for gated features the cascade."""
    downgraded = outcome.downgraded if outcome else d.downgraded
    headers = {
        "x-tier": str(runner.tier),
        "x-model": runner.model_name,
        "x-feature": d.route.label,
        "x-downgraded": "true" if downgraded else "false",
        "x-escalated": "true" if outcome and outcome.escalated else "false",
        "cache-control": "no-cache",
    }
    if outcome is not None:
        headers["x-attempts"] = ",".join(a.summary for a in outcome.attempts)
        if outcome.attempts[-1].replica:
            headers["x-replica"] = outcome.attempts[-1].replica
        if outcome.verdict is not None:
            headers["x-gate"] = outcome.verdict.header
    return headers


def _prompt_text(request: Request) -> str:
    if request.prompt is not None:
        return request.prompt
    return json.dumps([message_json(m) for m in request.messages])
