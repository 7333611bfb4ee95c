"""Tier recommendations: for each feature and each tier the profile serves, the failure rate with its interval
and the expected cost per successful outcome, and a move only when the evidence separates the tiers.

Evidence of a tier's failure rate for a feature, each with a 95% Wilson interval:
- `ledger`: the feature's attempts on that tier in the window (errors, gate rejections, negative feedback);
- `shadow`: the shadow's disagreement rate, evidence on the weaker tier of the pair (tiers/shadow_stats.py);
- `eval:<suite>`: results of a suite standing for the feature on that tier (added by `tier-runner recommend`,
  which reads the eval store; the gateway itself does not).
A source counts with at least MIN_EVIDENCE observations. Cost per success = (price + P(fail) x the feature's
failure_cost_usd) / P(success), where price is the tier's mean cost per request for this feature (from the
ledger, else the profile's price at the feature's mean tokens). Over the failure interval it gives an interval
of cost per success. A move is recommended only when it pays off with the current tier judged by its best
evidence and the candidate by its worst: the candidate's interval lies wholly below the current one. Nothing
is ever applied here; `tier-runner recommend --apply` runs the promotion gate first.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Engine

from hardware.profile import Price
from tiers.ledger.stats import Rate, attempt_failed, load_window
from tiers.routing import RoutingTable
from tiers.shadow_stats import is_shadow, shadow_estimates

MIN_EVIDENCE = 30
WEEK_S = 7 * 86400


@dataclass(frozen=True)
class Evidence:
    source: str  # ledger, shadow, eval:<suite>
    rate: Rate


@dataclass
class TierOption:
    tier: int
    price_usd: float  # expected inference cost of one request of this feature on this tier
    evidence: list[Evidence] = field(default_factory=list)

    def usable(self) -> list[Evidence]:
        return [e for e in self.evidence if e.rate.n >= MIN_EVIDENCE]

    def judged(self, best: bool) -> Evidence | None:
        """The evidence a decision takes: the lowest failure rate (best) or the highest (worst)."""
        usable = self.usable()
        if not usable:
            return None
        return (min if best else max)(usable, key=lambda e: (e.rate.value, e.rate.interval[1]))

    def cost_per_success(self, p: float | None, failure_cost: float) -> float:
        if p is None or p >= 1:
            return math.inf
        return (self.price_usd + p * failure_cost) / (1 - p)

    def cost_interval(self, e: Evidence, failure_cost: float) -> tuple[float, float]:
        low, high = e.rate.interval
        return self.cost_per_success(low, failure_cost), self.cost_per_success(high, failure_cost)


@dataclass
class Recommendation:
    feature: str
    current_tier: int
    failure_cost_usd: float
    weekly_requests: int
    options: list[TierOption]
    verdict: str  # move | stay | not_enough_evidence
    move_to: int | None = None
    monthly_saving_usd: float | None = None
    text: str = ""

    def as_dict(self) -> dict:
        def option(o: TierOption) -> dict:
            chosen = o.judged(best=o.tier == self.current_tier)
            interval = o.cost_interval(chosen, self.failure_cost_usd) if chosen else None
            return {"tier": o.tier, "price_usd": o.price_usd, "judged_by": chosen.source if chosen else None,
                    "failure_rate": chosen.rate.value if chosen else None,
                    "failure_low": chosen.rate.interval[0] if chosen else None,
                    "failure_high": chosen.rate.interval[1] if chosen else None,
                    "cost_per_success_usd": o.cost_per_success(chosen.rate.value, self.failure_cost_usd) if chosen else None,
                    "cost_per_success_low": _finite(interval[0]) if interval else None,
                    "cost_per_success_high": _finite(interval[1]) if interval else None,
                    "evidence": [{"source": e.source, "failures": e.rate.failures, "n": e.rate.n,
                                  "text": str(e.rate)} for e in o.evidence]}

        return {"feature": self.feature, "current_tier": self.current_tier, "verdict": self.verdict,
                "move_to": self.move_to, "monthly_saving_usd": self.monthly_saving_usd,
                "weekly_requests": self.weekly_requests, "text": self.text, "tiers": [option(o) for o in self.options]}


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def ledger_options(rows: list[dict], feedback: dict[str, str], table: RoutingTable, prices: dict[int, Price],
                   until: float) -> dict[str, tuple[list[TierOption], int]]:
    """Per feature: an option for each served tier with its ledger and shadow evidence, and last week's requests."""
    served = [r for r in rows if not is_shadow(r)]
    shadows = shadow_estimates(rows)
    result = {}
    for name in table.features:
        mine = [r for r in served if r["feature"] == name]
        finals = [r for r in mine if r["final"]]
        weekly = sum(1 for r in finals if r["ts"] >= until - WEEK_S)
        answered = [r for r in finals if not r["error_type"] and not r["cache_hit"]]
        tokens = ((sum(r["prompt_tokens"] for r in answered) / len(answered),
                   sum(r["completion_tokens"] for r in answered) / len(answered)) if answered else (0, 0))
        by_tier: dict[int, list[dict]] = defaultdict(list)
        for r in mine:
            if r["serving_tier"] is not None and not r["cache_hit"]:
                by_tier[r["serving_tier"]].append(r)
        options = []
        for tier in sorted(prices):
            attempts = by_tier.get(tier, [])
            priced = [r["cost_usd"] for r in attempts if not r["error_type"]]
            price = sum(priced) / len(priced) if priced else prices[tier].cost_usd(round(tokens[0]), round(tokens[1]))
            option = TierOption(tier, price)
            if attempts:
                option.evidence.append(Evidence("ledger", Rate(sum(attempt_failed(r, feedback) for r in attempts),
                                                               len(attempts))))
            shadow = shadows.get(name)
            if shadow is not None and shadow.estimates_tier == tier and shadow.rate.n:
                option.evidence.append(Evidence(f"shadow (tier {shadow.shadow_tier})", shadow.rate))
            options.append(option)
        result[name] = (options, weekly)
    return result


def recommendations(engine: Engine, table: RoutingTable, prices: dict[int, Price], since: float, until: float,
                    extra: dict[tuple[str, int], list[Evidence]] | None = None) -> list[Recommendation]:
    """Every feature's recommendation from the ledger window, plus `extra` evidence per (feature, tier)."""
    rows, feedback = load_window(engine, since, until)
    options = ledger_options(rows, feedback, table, prices, until)
    for (name, tier), evidence in (extra or {}).items():
        for option in options.get(name, ([], 0))[0]:
            if option.tier == tier:
                option.evidence.extend(evidence)
    return [decide(name, spec.tier, spec.failure_cost_usd, *options[name]) for name, spec in table.features.items()]


def decide(feature: str, current: int, failure_cost: float, options: list[TierOption], weekly: int) -> Recommendation:
    rec = Recommendation(feature, current, failure_cost, weekly, options, "not_enough_evidence")
    here = next((o for o in options if o.tier == current), None)
    mine = here.judged(best=True) if here else None
    if mine is None:
        have = f"{here.evidence[0].rate.n} observations" if here and here.evidence else "none"
        rec.text = (f"{feature}: not enough evidence (Tier {current}, where it is served, has {have}; a decision "
                    f"needs {MIN_EVIDENCE})")
        return rec
    low_here, _ = here.cost_interval(mine, failure_cost)
    candidates = []
    for o in options:
        theirs = o.judged(best=False) if o.tier != current else None
        if theirs is not None:
            _, high = o.cost_interval(theirs, failure_cost)
            candidates.append((o, theirs, high))
    better = [(o, e) for o, e, high in candidates if high < low_here]
    if better:
        o, e = min(better, key=lambda oe: oe[0].cost_per_success(oe[1].rate.value, failure_cost))
        per_request = ((here.price_usd + mine.rate.value * failure_cost) - (o.price_usd + e.rate.value * failure_cost))
        rec.verdict, rec.move_to = "move", o.tier
        rec.monthly_saving_usd = per_request * weekly * 30 / 7
        rec.text = (f"{feature}: Tier {current} → Tier {o.tier}, failure {_pct(mine.rate)} vs {_pct(e.rate)}, "
                    f"saves ${rec.monthly_saving_usd:,.0f}/month at last week's volume ({weekly} requests)")
        return rec
    clearly_worse = [o for o, e, _ in candidates if o.cost_interval(e, failure_cost)[0] > here.cost_interval(mine, failure_cost)[1]]
    if candidates and len(clearly_worse) == len(candidates):
        rec.verdict = "stay"
        rec.text = (f"{feature}: stays on Tier {current} (failure {_pct(mine.rate)}); every other tier with evidence "
                    f"costs more per success")
        return rec
    missing = [f"Tier {o.tier}" for o in options if o.tier != current and o.judged(best=False) is None]
    why = "the cost-per-success intervals overlap" if candidates else "no other tier has evidence"
    rec.text = (f"{feature}: not enough evidence to move from Tier {current} (failure {_pct(mine.rate)}): {why}"
                + (f"; no evidence on {', '.join(missing)}" if missing and candidates else ""))
    return rec


def _pct(rate: Rate) -> str:
    low, high = rate.interval
    return f"{rate.value:.1%} [{low * 100:.1f}, {high * 100:.1f}]"


def format_recommendations(recs: list[Recommendation]) -> str:
    lines = ["| feature | tier | price/request | failure [95% CI] (judged by) | cost per success [95% CI] |",
             "|---|---|---|---|---|"]
    for rec in recs:
        for o in rec.options:
            chosen = o.judged(best=o.tier == rec.current_tier)
            here = " (current)" if o.tier == rec.current_tier else ""
            if chosen is None:
                seen = ", ".join(f"{e.source}: {e.rate.n}" for e in o.evidence) or "none"
                lines.append(f"| {rec.feature} | {o.tier}{here} | ${o.price_usd:.6f} | not enough ({seen}) | - |")
                continue
            low, high = o.cost_interval(chosen, rec.failure_cost_usd)
            point = o.cost_per_success(chosen.rate.value, rec.failure_cost_usd)
            lines.append(f"| {rec.feature} | {o.tier}{here} | ${o.price_usd:.6f} | {chosen.rate} ({chosen.source}) | "
                         f"${point:.4f} [{low:.4f}, {high:.4f}] |")
    return "\n".join(lines + [""] + [r.text for r in recs])
