"""The shadow's estimate from the ledger: per feature, the share of shadowed answers the other tier disagreed with.

Disagreement is an estimated failure of the weaker tier of the two: of the feature's own tier when the shadow
is stronger (a smaller tier number), of the shadow tier when it is weaker (evidence for moving the feature
down). Rows whose shadow gave nothing to compare (an error, an unparseable answer) count in spend, not in the
rate.
"""

from __future__ import annotations

from dataclasses import dataclass

from tiers.ledger.stats import Rate


@dataclass(frozen=True)
class ShadowEstimate:
    feature: str
    served_tier: int | None  # the feature's tier when it was shadowed
    shadow_tier: int | None
    rate: Rate  # disagreements / comparisons
    calls: int  # shadow calls, comparable or not
    spend_usd: float

    @property
    def estimates_tier(self) -> int | None:
        """The tier whose failure rate the disagreement estimates: the weaker of the two."""
        if self.served_tier is None or self.shadow_tier is None:
            return None
        return max(self.served_tier, self.shadow_tier)


def is_shadow(row: dict) -> bool:
    return bool(row.get("shadow_of"))


def shadow_estimates(rows: list[dict]) -> dict[str, ShadowEstimate]:
    """Per shadowed feature, from its shadow rows (any other rows are ignored)."""
    by_feature: dict[str, list[dict]] = {}
    for row in rows:
        if is_shadow(row):
            by_feature.setdefault(row["shadow_of"], []).append(row)
    result = {}
    for feature, rows_of in by_feature.items():
        latest = rows_of[-1]  # rows come in time order; a feature moved since counts only under its latest pair
        mine = [r for r in rows_of if (r["declared_tier"], r["serving_tier"]) ==
                (latest["declared_tier"], latest["serving_tier"])]
        compared = [r for r in mine if r["shadow_agreed"] is not None]
        result[feature] = ShadowEstimate(
            feature=feature, served_tier=latest["declared_tier"], shadow_tier=latest["serving_tier"],
            rate=Rate(sum(not r["shadow_agreed"] for r in compared), len(compared)), calls=len(mine),
            spend_usd=sum(r["cost_usd"] for r in mine))
    return result
