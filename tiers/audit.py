"""The feature audit: which features are served by the wrong tier, from the ledger's cost and failures.

INVERTED    a high-value feature (revenue, risk) served by the cheap tier, or a failure rate whose
            lower bound is above its tier's target: cost pressure has pushed it too low.
OVERSPEND   a low-value feature (internal, retention) on Tier 1 whose failure rate's upper bound is
            under Tier 2's target: a cheaper tier would very likely do.
OVER_BUDGET spend in the current budget period has reached the feature's budget.
NO_DATA     no requests in the window: nothing can be said.
DRIFT       a stronger shadow tier disagrees with the feature's answers so often that the lower bound of that
            rate's interval is above the feature's tier target (tiers/shadow.py): failing before anyone complains.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import Engine

from tiers.budgets import period_start
from tiers.ledger.stats import GroupStats, Rate, attempt_failed, effective_cost, group_stats, load_window
from tiers.routing import RoutingTable
from tiers.shadow_stats import ShadowEstimate, is_shadow, shadow_estimates

HIGH_VALUE = {"revenue", "risk"}
LOW_VALUE = {"internal", "retention"}


@dataclass
class AuditRow:
    feature: str
    value: str
    owner: str
    declared_tier: int
    serving: str  # the tier:model that gave most answers, e.g. "3:smollm2-135m-instruct-q4_1"
    requests: int
    spend_usd: float
    spend_share: float
    value_share: float
    rate: Rate
    effective_cost_per_success: float | None
    budget_spent_usd: float | None
    flags: list[str] = field(default_factory=list)
    shadow: ShadowEstimate | None = None  # shadow rows are counted here only, never in requests or spend

    def as_dict(self) -> dict:
        low, high = self.rate.interval
        return {
            "feature": self.feature, "value": self.value, "owner": self.owner, "declared_tier": self.declared_tier,
            "serving": self.serving, "requests": self.requests, "spend_usd": round(self.spend_usd, 8),
            "spend_share": round(self.spend_share, 4), "value_share": round(self.value_share, 4),
            "failure_rate": self.rate.value, "failure_rate_low": low if self.rate.n else None,
            "failure_rate_high": high if self.rate.n else None, "failure_rate_text": str(self.rate),
            "effective_cost_per_success_usd": self.effective_cost_per_success,
            "budget_spent_usd": self.budget_spent_usd, "flags": self.flags, **_shadow_dict(self.shadow),
        }


@dataclass
class Audit:
    since: float
    until: float
    rows: list[AuditRow]
    groups: list[GroupStats]

    def as_dict(self) -> dict:
        return {"since": self.since, "until": self.until, "features": [r.as_dict() for r in self.rows],
                "by_tier": [_group_dict(g) for g in self.groups]}


def run_audit(engine: Engine, table: RoutingTable, since: float, until: float | None = None) -> Audit:
    until = until or time.time()
    rows, feedback = load_window(engine, since, until)
    shadows = shadow_estimates(rows)
    rows = [r for r in rows if not is_shadow(r)]
    failure_cost = {name: f.failure_cost_usd for name, f in table.features.items()}
    total_spend = sum(r["cost_usd"] for r in rows) or 0.0
    finals = [r for r in rows if r["final"]]
    at_stake = {name: sum(1 for r in finals if r["feature"] == name) * spec.failure_cost_usd
                for name, spec in table.features.items()}
    total_at_stake = sum(at_stake.values())
    audit_rows = []
    for name, spec in table.features.items():
        mine = [r for r in rows if r["feature"] == name]
        answers = [r for r in mine if r["final"]]
        failures = sum(attempt_failed(r, feedback) for r in answers)
        spend = sum(r["cost_usd"] for r in mine)
        serving_counts = Counter((r["serving_tier"], r["model"]) for r in answers if r["serving_tier"] is not None)
        serving_tier, serving_model = serving_counts.most_common(1)[0][0] if serving_counts else (None, None)
        rate = Rate(failures, len(answers))
        budget_spent = None
        if spec.budget is not None:
            start = period_start(spec.budget.period, until)
            budget_spent = sum(r["cost_usd"] for r in mine if r["ts"] >= start)
        row = AuditRow(
            feature=name, value=spec.value, owner=spec.owner, declared_tier=spec.tier,
            serving=f"{serving_tier}:{serving_model}" if serving_tier else "none", requests=len(answers),
            spend_usd=spend, spend_share=spend / total_spend if total_spend else 0.0,
            value_share=at_stake[name] / total_at_stake if total_at_stake else 0.0, rate=rate,
            effective_cost_per_success=effective_cost(spend, failures, len(answers) - failures, spec.failure_cost_usd),
            budget_spent_usd=budget_spent, shadow=shadows.get(name),
        )
        row.flags = flags_for(row, serving_tier, table)
        audit_rows.append(row)
    return Audit(since, until, audit_rows, group_stats(rows, feedback, failure_cost))


def flags_for(row: AuditRow, serving_tier: int | None, table: RoutingTable) -> list[str]:
    flags = []
    if row.requests == 0:
        return ["NO_DATA"]
    tier = serving_tier or row.declared_tier
    low, high = row.rate.interval
    if (row.value in HIGH_VALUE and tier == 3) or low > table.failure_targets.get(tier, 1.0):
        flags.append("INVERTED")
    if row.value in LOW_VALUE and tier == 1 and high < table.failure_targets.get(2, 0.0):
        flags.append("OVERSPEND")
    spec = table.features[row.feature]
    if spec.budget is not None and row.budget_spent_usd is not None and row.budget_spent_usd >= spec.budget.usd:
        flags.append("OVER_BUDGET")
    shadow = row.shadow
    if (shadow is not None and shadow.rate.n and shadow.estimates_tier == tier
            and shadow.rate.interval[0] > table.failure_targets.get(tier, 1.0)):
        flags.append("DRIFT")
    return flags


def _shadow_dict(shadow: ShadowEstimate | None) -> dict:
    if shadow is None:
        return {"shadow": None}
    low, high = shadow.rate.interval
    return {"shadow": {"tier": shadow.shadow_tier, "estimates_tier": shadow.estimates_tier, "calls": shadow.calls,
                       "compared": shadow.rate.n, "failure_rate": shadow.rate.value,
                       "failure_rate_low": low if shadow.rate.n else None,
                       "failure_rate_high": high if shadow.rate.n else None, "failure_rate_text": str(shadow.rate),
                       "spend_usd": round(shadow.spend_usd, 8)}}


def _group_dict(g: GroupStats) -> dict:
    low, high = g.rate.interval
    return {"feature": g.feature, "tier": g.tier, "model": g.model, "attempts": g.attempts,
            "failure_rate": g.rate.value, "failure_rate_low": low if g.rate.n else None,
            "failure_rate_high": high if g.rate.n else None, "p50_ms": g.p50_ms, "p95_ms": g.p95_ms,
            "spend_usd": round(g.spend_usd, 8), "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.completion_tokens, "cache_hits": g.cache_hits, "escalations": g.escalations,
            "effective_cost_per_success_usd": g.effective_cost_per_success}


def format_table(audit: Audit) -> str:
    lines = ["| feature | value | tier | serving | requests | spend share | failure rate [95% CI] | "
             "shadow failure [95% CI] (spend) | cost per success | flags |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in audit.rows:
        eff = f"${r.effective_cost_per_success:.6f}" if r.effective_cost_per_success is not None else "n/a"
        shadow = (f"{r.shadow.rate} by tier {r.shadow.shadow_tier} (${r.shadow.spend_usd:.6f})" if r.shadow else "-")
        lines.append(f"| {r.feature} | {r.value} | {r.declared_tier} | {r.serving} | {r.requests} | "
                     f"{r.spend_share:.1%} | {r.rate} | {shadow} | {eff} | {' '.join(r.flags) or '-'} |")
    return "\n".join(lines)
