"""Ledger rows: the typed record of one attempt, built from what the serving layer knows."""

from __future__ import annotations

import time
import uuid

from pydantic import BaseModel

from hardware.errors import TierRunnerError


class LedgerRow(BaseModel):
    attempt_id: str
    request_id: str
    parent_id: str | None = None
    attempt_no: int = 1
    final: bool = True
    ts: float
    route: str
    feature: str | None = None
    declared_tier: int | None = None
    serving_tier: int | None = None
    runner: str | None = None
    model: str | None = None
    client_key_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    cache_hit: bool = False
    cache_similarity: float | None = None
    gate: str | None = None
    gate_passed: bool | None = None
    gate_reason: str | None = None
    escalated: bool = False
    downgraded: bool = False
    error_type: str | None = None
    http_status: int = 200
    prompt_text: str | None = None
    completion_text: str | None = None
    text_expires_at: float | None = None


def new_attempt_id() -> str:
    return f"att_{uuid.uuid4().hex}"


def error_row(request_id: str, route: str, feature: str | None, declared_tier: int | None,
              exc: TierRunnerError | None, *, status: int, error_type: str, latency_ms: float,
              client_key_id: str | None = None) -> LedgerRow:
    """A request that failed before any tier answered still leaves exactly one row."""
    return LedgerRow(attempt_id=new_attempt_id(), request_id=request_id, ts=time.time(), route=route,
                     feature=feature, declared_tier=declared_tier, client_key_id=client_key_id,
                     latency_ms=latency_ms, error_type=error_type or (exc.code if exc else None), http_status=status)


def rows_for_attempts(request_id: str, route_label: str, feature: str | None, declared_tier: int | None,
                      attempts: list[dict], *, client_key_id: str | None = None,
                      ttft_ms: float | None = None) -> list[LedgerRow]:
    """Link a request's attempts in order: each row's parent is the attempt before it; the last is final.

    Each attempt dict carries serving_tier, runner, model, usage tokens, latency, cost, gate fields,
    escalated/downgraded flags and optionally stored text and an error.
    """
    rows: list[LedgerRow] = []
    now = time.time()
    for number, attempt in enumerate(attempts, start=1):
        rows.append(LedgerRow(
            attempt_id=new_attempt_id(), request_id=request_id,
            parent_id=rows[-1].attempt_id if rows else None, attempt_no=number,
            final=number == len(attempts), ts=now, route=route_label, feature=feature,
            declared_tier=declared_tier, client_key_id=client_key_id,
            ttft_ms=ttft_ms if number == len(attempts) else None, **attempt,
        ))
    return rows
