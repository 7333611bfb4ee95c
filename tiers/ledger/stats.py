"""Numbers people act on, from the ledger: failure rates with intervals, latency, spend, cost per success."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from tiers.errors import LedgerUnavailable
from tiers.ledger import schema

NEGATIVE_FEEDBACK = {"corrected", "escalated_to_human", "negative"}
FEW_SAMPLES = 30


def wilson_interval(failures: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; (0, 1) when there is no data."""
    if n == 0:
        return 0.0, 1.0
    p = failures / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    failures: int
    n: int

    @property
    def value(self) -> float | None:
        return self.failures / self.n if self.n else None

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.failures, self.n)

    def __str__(self) -> str:
        if self.n == 0:
            return "no data"
        low, high = self.interval
        few = " (few samples)" if self.n < FEW_SAMPLES else ""
        return f"{self.value:.1%} [{low:.1%}, {high:.1%}]{few}"


@dataclass
class GroupStats:
    """One feature x serving tier x model over a window; attempts, so a cascade's tiers are counted apart."""

    feature: str
    tier: int | None
    model: str | None
    attempts: int
    rate: Rate
    p50_ms: float | None
    p95_ms: float | None
    spend_usd: float
    prompt_tokens: int
    completion_tokens: int
    cache_hits: int
    escalations: int
    effective_cost_per_success: float | None


def load_window(engine: Engine, since: float, until: float) -> tuple[list[dict], dict[str, str]]:
    """Attempt rows in [since, until) and each request's latest feedback outcome."""
    a, f = schema.attempts, schema.feedback
    try:
        with engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(
                select(a).where(a.c.ts >= since, a.c.ts < until).order_by(a.c.ts))]
            request_ids = {r["request_id"] for r in rows}
            outcomes: dict[str, str] = {}
            for request_id, outcome in conn.execute(select(f.c.request_id, f.c.outcome).order_by(f.c.ts, f.c.id)):
                if request_id in request_ids:
                    outcomes[request_id] = outcome
    except SQLAlchemyError:
        raise LedgerUnavailable("the ledger database is unavailable, and the audit reads it; retry later "
                                "(GET /ready shows the ledger's state)") from None
    return rows, outcomes


def attempt_failed(row: dict, feedback: dict[str, str]) -> bool:
    """Errors, gate rejections, and for the answer the client got, negative feedback."""
    if row["error_type"] or row["gate_passed"] is False:
        return True
    return bool(row["final"]) and feedback.get(row["request_id"]) in NEGATIVE_FEEDBACK


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def group_stats(rows: list[dict], feedback: dict[str, str], failure_cost: dict[str, float]) -> list[GroupStats]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["feature"] or row["route"], row["serving_tier"], row["model"])].append(row)
    result = []
    for (feature, tier, model), members in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        failures = sum(attempt_failed(r, feedback) for r in members)
        latencies = [r["latency_ms"] for r in members if not r["error_type"]]
        spend = sum(r["cost_usd"] for r in members)
        result.append(GroupStats(
            feature=feature, tier=tier, model=model, attempts=len(members), rate=Rate(failures, len(members)),
            p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95), spend_usd=spend,
            prompt_tokens=sum(r["prompt_tokens"] for r in members),
            completion_tokens=sum(r["completion_tokens"] for r in members),
            cache_hits=sum(bool(r["cache_hit"]) for r in members),
            escalations=sum(bool(r["escalated"]) for r in members),
            effective_cost_per_success=effective_cost(spend, failures, len(members) - failures,
                                                      failure_cost.get(feature, 0.0)),
        ))
    return result


def effective_cost(spend: float, failures: int, successes: int, failure_cost_usd: float) -> float | None:
    """(spend incl. retries and escalations + failures x what a failure costs) / successes."""
    if successes == 0:
        return None
    return (spend + failures * failure_cost_usd) / successes
