"""Spend per period, from the ledger, kept current in memory: feature budgets and client-key spend caps."""

from __future__ import annotations

import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import func, select

from tiers.errors import BudgetExceeded
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


def period_end(period: str, now: float | None = None) -> float:
    """Start of the next UTC day, ISO week or month."""
    start = dt.datetime.fromtimestamp(period_start(period, now), dt.UTC)
    if period == "day":
        return (start + dt.timedelta(days=1)).timestamp()
    if period == "week":
        return (start + dt.timedelta(days=7)).timestamp()
    return (start.replace(year=start.year + 1, month=1) if start.month == 12
            else start.replace(month=start.month + 1)).timestamp()


class SpendMeter:
    """Spend by a ledger column (feature, client_key_id) in the current period.

    Read from the database once per period, then refreshed every `refresh_s` (other replicas spend
    too) by a background thread while the last figure keeps answering, so a request never waits on a
    remote database for it; only the first check of a period reads inline. Rows recorded here are
    added at once. Rows still in the spool at a refresh (under the flush interval) are counted at the
    next one.
    """

    COLUMNS = ("feature", "client_key_id")

    def __init__(self, ledger: Ledger, refresh_s: float = 30.0):
        self.ledger = ledger
        self.refresh_s = refresh_s
        self._spend: dict[tuple[str, str, str], tuple[float, float, float]] = {}  # -> (start, usd, read at)
        self._refreshing: set[tuple[str, str, str]] = set()
        self._refresher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spend-refresh")

    def spent(self, column: str, value: str, period: str) -> float:
        assert column in self.COLUMNS
        start = period_start(period)
        key = (column, value, period)
        cached = self._spend.get(key)
        if not cached or cached[0] != start:
            return self._read(key, start)
        if time.monotonic() - cached[2] >= self.refresh_s and key not in self._refreshing:
            self._refreshing.add(key)
            self._refresher.submit(self._refresh, key, start)
        return cached[1]

    def _refresh(self, key: tuple[str, str, str], start: float) -> None:
        try:
            self._read(key, start)
        except Exception as exc:  # a database outage: keep the last figure, try again at the next check
            log.warning("spend refresh for %s=%s failed: %s", key[0], key[1], exc.__class__.__name__)
        finally:
            self._refreshing.discard(key)

    def _read(self, key: tuple[str, str, str], start: float) -> float:
        column, value, _ = key
        c = schema.attempts.c
        with self.ledger.engine.connect() as conn:
            usd = float(conn.execute(select(func.coalesce(func.sum(c.cost_usd), 0.0))
                                     .where(getattr(c, column) == value, c.ts >= start)).scalar())
        self._spend[key] = (start, usd, time.monotonic())
        return usd

    def add(self, rows: list[LedgerRow]) -> None:
        for (column, value, period), (start, usd, read_at) in list(self._spend.items()):
            extra = sum(r.cost_usd for r in rows if getattr(r, column) == value and r.ts >= start)
            if extra:
                self._spend[(column, value, period)] = (start, usd + extra, read_at)


class Budgets:
    def __init__(self, meter: SpendMeter):
        self.meter = meter
        self._warned: set[tuple[str, float]] = set()

    def check(self, route: Route) -> str | None:
        """None when within budget; else the action, after raising for `block`."""
        spec = route.spec
        if spec is None or spec.budget is None:
            return None
        budget: Budget = spec.budget
        spent = self.meter.spent("feature", route.feature, budget.period)
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
