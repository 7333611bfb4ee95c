"""Per-feature budgets: spend per period from the ledger, kept current in memory between refreshes."""

from __future__ import annotations

import datetime as dt
import logging
import time

from sqlalchemy import func, select

from hardware.errors import BudgetExceeded
from tiers.ledger import schema
from tiers.ledger.rows import LedgerRow
from tiers.ledger.store import Ledger
from tiers.routing import Budget, Route

log = logging.getLogger("tier_runner.budgets")


def period_start(period: str, now: float | None = None) -> float:
    """Start of the current UTC day, ISO week (Monday) or month."""
    today = dt.datetime.fromtimestamp(now or time.time(), dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "week":
        today -= dt.timedelta(days=today.weekday())
    elif period == "month":
        today = today.replace(day=1)
    return today.timestamp()


class Budgets:
    """Spend is read from the ledger once per period (and every `refresh_s`, for other replicas' spend)."""

    def __init__(self, ledger: Ledger, refresh_s: float = 30.0):
        self.ledger = ledger
        self.refresh_s = refresh_s
        self._spend: dict[str, tuple[float, float, float]] = {}  # feature -> (period start, usd, read at)
        self._warned: set[tuple[str, float]] = set()

    def spent(self, feature: str, budget: Budget) -> float:
        start = period_start(budget.period)
        cached = self._spend.get(feature)
        if cached and cached[0] == start and time.monotonic() - cached[2] < self.refresh_s:
            return cached[1]
        with self.ledger.engine.connect() as conn:  # rows still in the spool (< flush interval) come next refresh
            usd = conn.execute(select(func.coalesce(func.sum(schema.attempts.c.cost_usd), 0.0))
                               .where(schema.attempts.c.feature == feature, schema.attempts.c.ts >= start)).scalar()
        self._spend[feature] = (start, float(usd), time.monotonic())
        return float(usd)

    def add(self, rows: list[LedgerRow]) -> None:
        for row in rows:
            cached = self._spend.get(row.feature or "")
            if cached:
                self._spend[row.feature] = (cached[0], cached[1] + row.cost_usd, cached[2])

    def check(self, route: Route) -> str | None:
        """None when within budget; else the action, after raising for `block`."""
        spec = route.spec
        if spec is None or spec.budget is None:
            return None
        budget = spec.budget
        spent = self.spent(route.feature, budget)
        if spent < budget.usd:
            return None
        key = (route.feature, period_start(budget.period))
        if key not in self._warned:
            self._warned.add(key)
            log.warning("feature %s is over its %s budget: $%.4f spent of $%.2f (action: %s)", route.feature,
                        budget.period, spent, budget.usd, budget.action)
        if budget.action == "block":
            raise BudgetExceeded(f"feature {route.feature!r} has spent ${spent:.4f} of its ${budget.usd:.2f} "
                                 f"{budget.period}ly budget; it is blocked until the period ends. Raise the budget "
                                 f"in the routing table or change its action")
        return budget.action
