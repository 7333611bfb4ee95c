"""Spend per period, from the ledger, kept current in memory: feature budgets and client-key spend caps.

Admission is a reservation: `SpendMeter.admit` checks every limit of a request and reserves the request's
cost against all of them in one step under one lock, so concurrent requests cannot all pass the same check
before any of them is charged. `settle` releases the reservation and books the rows' real cost when the
request's rows are recorded. A limit is reached when spend plus what is reserved is at or over it.

What is reserved (`reservation_usd`) is the request's worst-case completion (max_tokens for each of its n
choices) and an estimate of its prompt (the caller's token estimate), at the serving tier's price. A cascade's
escalation to a dearer tier is not reserved: a `block` budget can be overshot by what escalations and
prompt underestimates of the requests in flight add, never by a burst that passed one check together.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from hardware.errors import TierRunnerError
from hardware.profile import Price
from tiers.errors import BudgetExceeded
from tiers.ledger import schema
from tiers.ledger.rows import LedgerRow
from tiers.ledger.store import Ledger
from tiers.routing import Budget, Route

log = logging.getLogger("tier_runner.budgets")

Key = tuple[str, str, str]  # (ledger column, value, period)
DAY_S = 86400


def period_start(period: str, now: float | None = None) -> float:
    """Start of the current UTC day, ISO week (Monday) or month."""
    return _start_of(period, int((now or time.time()) // DAY_S))


@functools.lru_cache(maxsize=64)
def _start_of(period: str, day: int) -> float:
    """Per UTC day number (POSIX days are 86,400 s each): a request asks once per limit, a datetime each time."""
    today = dt.datetime.fromtimestamp(day * DAY_S, dt.UTC)
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


def reservation_usd(price: Price, prompt_tokens: int, max_tokens: int | None, n: int = 1) -> float:
    """What admitting a request reserves: its prompt and every token it may generate, at its tier's price."""
    return price.cost_usd(prompt_tokens, (max_tokens or 0) * n)


@dataclass(frozen=True)
class Limit:
    """Spend of one ledger column value per period, and what happens at it: `refuse(spent)` builds the error
    for a blocking limit; a limit without one is only reported."""

    column: str
    value: str
    period: str
    usd: float
    refuse: Callable[[float], TierRunnerError] | None = None


@dataclass
class _Figure:
    start: float  # the period it belongs to
    usd: float = 0.0  # a lower bound of the period's spend: the larger of the last read and what was booked here
    read_at: float | None = None  # monotonic time of the last database read; None: never read yet
    reserved: float = 0.0  # admitted requests not yet settled


@dataclass
class Reservation:
    usd: float
    figures: list[_Figure] = field(default_factory=list)
    settled: bool = False


class SpendMeter:
    """Spend by a ledger column (feature, client_key_id) in the current period.

    Never read on the request path: a figure the meter has not read yet starts from what this process has
    booked in the period and is read from the database in the background; after that it is refreshed
    every `refresh_s` (other replicas spend too) while the last figure keeps answering. A failed read (the
    database is down) keeps the figure, shows on the ledger's health, and is retried at the next check.
    Rows still in the spool at a read (under the flush interval) are counted at the next one.
    """

    COLUMNS = ("feature", "client_key_id")

    def __init__(self, ledger: Ledger, refresh_s: float = 30.0):
        self.ledger = ledger
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._figures: dict[Key, _Figure] = {}
        self._refreshing: set[Key] = set()
        self._refresher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spend-refresh")

    def spent(self, column: str, value: str, period: str) -> float:
        """Booked spend in the current period, reservations excluded."""
        with self._lock:
            return self._figure((column, value, period)).usd

    def admit(self, limits: list[Limit], usd: float) -> tuple[Reservation | None, list[tuple[Limit, float]]]:
        """In one step: the limits reached (spend plus reservations at or over them, with the spend) and, when
        none of those refuses, a reservation of `usd` against every limit; None when one refuses."""
        with self._lock:
            figures = [self._figure((limit.column, limit.value, limit.period)) for limit in limits]
            reached = [(limit, figure.usd) for limit, figure in zip(limits, figures)
                       if figure.usd + figure.reserved >= limit.usd]
            if any(limit.refuse is not None for limit, _ in reached):
                return None, reached
            for figure in figures:
                figure.reserved += usd
            return Reservation(usd, figures), reached

    def settle(self, reservations: list[Reservation], rows: list[LedgerRow]) -> None:
        """Release the reservations (each once) and book the rows' cost, in one step."""
        with self._lock:
            for reservation in reservations:
                if reservation.settled:
                    continue
                reservation.settled = True
                for figure in reservation.figures:
                    figure.reserved = max(0.0, figure.reserved - reservation.usd)
            for (column, value, _), figure in self._figures.items():
                figure.usd += sum(r.cost_usd for r in rows if getattr(r, column) == value and r.ts >= figure.start)

    def _figure(self, key: Key) -> _Figure:
        """The key's figure for the current period (under the lock); schedules a read when it is due."""
        assert key[0] in self.COLUMNS
        start = period_start(key[2])
        figure = self._figures.get(key)
        if figure is None or figure.start != start:
            figure = self._figures[key] = _Figure(start)  # a new period: reservations of the last one stay there
        due = figure.read_at is None or time.monotonic() - figure.read_at >= self.refresh_s
        if due and key not in self._refreshing:
            self._refreshing.add(key)
            self._refresher.submit(self._refresh, key, start)
        return figure

    def _refresh(self, key: Key, start: float) -> None:
        column, value, _ = key
        c = schema.attempts.c
        try:
            with self.ledger.engine.connect() as conn:
                usd = float(conn.execute(select(func.coalesce(func.sum(c.cost_usd), 0.0))
                                         .where(getattr(c, column) == value, c.ts >= start)).scalar())
        except SQLAlchemyError as exc:  # the database is down: keep the figure, read again at the next check
            self.ledger.note_unreachable(f"spend of {column}={value}", exc)
            return
        finally:
            with self._lock:
                self._refreshing.discard(key)
        with self._lock:
            figure = self._figures.get(key)
            if figure is not None and figure.start == start:
                figure.usd, figure.read_at = max(figure.usd, usd), time.monotonic()


class Budgets:
    """The routing table's feature budgets as spend limits; each reached budget is logged once per period."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, float]] = set()

    def limits(self, route: Route) -> list[Limit]:
        spec = route.spec
        if spec is None or spec.budget is None:
            return []
        budget: Budget = spec.budget

        def refuse(spent: float) -> BudgetExceeded:
            return BudgetExceeded(f"feature {route.feature!r} has spent ${spent:.4f} of its ${budget.usd:.2f} "
                                  f"{budget.period}ly budget; it is blocked until the period ends. Raise the budget "
                                  f"in the routing table or change its action")

        return [Limit("feature", route.feature, budget.period, budget.usd, refuse if budget.action == "block" else None)]

    def reached(self, route: Route, spent: float) -> str:
        """Log a reached budget (once per period) and return its action."""
        budget: Budget = route.spec.budget
        key = (route.feature, period_start(budget.period))
        if key not in self._warned:
            self._warned.add(key)
            log.warning("feature %s is over its %s budget: $%.4f spent of $%.2f (action: %s)", route.feature,
                        budget.period, spent, budget.usd, budget.action)
        return budget.action
