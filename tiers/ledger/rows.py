"""Ledger rows: the typed record of one attempt, built from what the serving layer knows.

Every field is bounded here, where the row is made, to what its column holds on every backend:
strings are cut to the column's length and cleaned of what PostgreSQL refuses (NUL, lone
surrogates), integers are clamped to 32 bits and non-finite floats dropped. A row that passes this
model is one the database takes; the store dead-letters the rare one it still refuses.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Literal

from pydantic import BaseModel, model_validator

from hardware.errors import TierRunnerError
from runners.answer import new_id
from tiers.ledger import schema

Api = Literal["chat", "messages", "responses", "completions", "embeddings"]
INT32 = (-(2**31), 2**31 - 1)
ELLIPSIS = "…"
COLUMNS = {c.name: (getattr(c.type, "length", None), c.nullable) for c in schema.attempts.columns}


def spec_hash(obj: Any) -> str:
    """12 hex chars of the sha256 of `obj` as canonical JSON: ties a ledger row to the exact spec (a gate's
    name and arguments, a routing feature) that was in force, so a change of settings shows as a new hash."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def _clean_text(value: str, limit: int | None) -> str:
    value = value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    if limit is not None and len(value) > limit:
        value = value[: limit - 1] + ELLIPSIS
    return value


class LedgerRow(BaseModel):
    attempt_id: str
    request_id: str
    parent_id: str | None = None
    attempt_no: int = 1
    final: bool = True
    ts: float
    route: str
    api: Api = "chat"
    feature: str | None = None
    feature_spec: str | None = None
    declared_tier: int | None = None
    serving_tier: int | None = None
    runner: str | None = None
    replica: str | None = None  # the pool member that answered (a tier with `replicas:`)
    model: str | None = None
    client_key_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: int = 0
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    cache_hit: bool = False
    cache_similarity: float | None = None
    gate: str | None = None
    gate_spec: str | None = None
    gate_passed: bool | None = None
    gate_reason: str | None = None
    escalated: bool = False
    downgraded: bool = False
    error_type: str | None = None
    http_status: int = 200
    prompt_text: str | None = None
    completion_text: str | None = None
    text_expires_at: float | None = None
    shadow_of: str | None = None  # a shadow row: the feature whose answer was re-asked (its `feature` stays empty)
    shadow_agreed: bool | None = None  # the two answers agreed; None when the shadow gave nothing to compare

    @model_validator(mode="after")
    def _bounded(self) -> LedgerRow:
        """One pass over the typed fields (a row is made per attempt on the request path, so this stays cheap):
        short ASCII text, 32-bit integers and finite floats, the usual case, are left as they are."""
        values = self.__dict__
        for name, length in _TEXT:
            value = values[name]
            if value is not None and not (value.isascii() and (length is None or len(value) <= length)
                                          and "\x00" not in value):
                values[name] = _clean_text(value, length)
        for name in _INTEGERS:
            value = values[name]
            if value is not None and not INT32[0] <= value <= INT32[1]:
                values[name] = min(max(value, INT32[0]), INT32[1])
        for name, nullable in _FLOATS:
            value = values[name]
            if value is not None and not math.isfinite(value):
                values[name] = None if nullable else 0.0
        return self


def _fields_of(kind: type) -> list[str]:
    return [name for name, f in LedgerRow.model_fields.items() if f.annotation in (kind, kind | None)]


_TEXT = [(name, COLUMNS[name][0]) for name in _fields_of(str)]
_INTEGERS = _fields_of(int)
_FLOATS = [(name, COLUMNS[name][1]) for name in _fields_of(float)]
assert len(_TEXT) + len(_INTEGERS) + len(_FLOATS) + len(_fields_of(bool)) + 1 == len(LedgerRow.model_fields), \
    "a ledger field whose type _bounded does not know"  # + 1: api, a Literal


def new_attempt_id() -> str:
    return f"att_{new_id()}"


def error_row(request_id: str, route: str, feature: str | None, declared_tier: int | None,
              exc: TierRunnerError | None, *, status: int, error_type: str, latency_ms: float,
              client_key_id: str | None = None, api: Api = "chat") -> LedgerRow:
    """A request that failed before any tier answered still leaves exactly one row."""
    return LedgerRow(attempt_id=new_attempt_id(), request_id=request_id, ts=time.time(), route=route, api=api,
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
