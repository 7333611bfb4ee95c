"""Where a request's rows go: the ledger, the metrics and the spend counters, from one call; and, before any
work, the spend limits a request must pass, reserved in the same counters until its rows settle them."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from tiers.auth import ClientKey
from tiers.budgets import Budgets, Reservation, SpendMeter
from tiers.ledger.rows import LedgerRow
from tiers.ledger.store import Ledger
from tiers.metrics import Metrics
from tiers.routing import Route

# Every admitted request leaves rows, which settle its reservation; one that somehow did not is dropped
# after this long (longer than any answer may take), so a lost reservation cannot block a budget for good.
RESERVATION_TTL_S = 3600.0


class Recorder:
    def __init__(self, ledger: Ledger, metrics: Metrics):
        self.ledger = ledger
        self.metrics = metrics
        self.spend = SpendMeter(ledger)
        self.budgets = Budgets()
        self._reserved: OrderedDict[str, tuple[float, Reservation]] = OrderedDict()  # request id -> (when, what)
        self._lock = threading.Lock()
        metrics.watch_ledger(ledger.health)

    def admit(self, route: Route, key: ClientKey | None, request_id: str, reserve_usd: float) -> None:
        """The feature's budget and the key's spend cap, checked and charged `reserve_usd` in one step (see
        tiers/budgets.py); raises BudgetExceeded or RateLimited for a blocking limit that is reached. The
        reservation is settled when rows with this request id are recorded."""
        limits = self.budgets.limits(route) + (key.spend_limits() if key else [])
        reservation, reached = self.spend.admit(limits, reserve_usd)
        for limit, spent in reached:
            if limit.column == "feature":
                self.metrics.budget_exceeded.labels(route.feature, self.budgets.reached(route, spent)).inc()
        if reservation is None:
            limit, spent = next((limit, spent) for limit, spent in reached if limit.refuse is not None)
            raise limit.refuse(spent)
        now = time.monotonic()
        with self._lock:
            self._reserved[request_id] = (now, reservation)
            while self._reserved and next(iter(self._reserved.values()))[0] < now - RESERVATION_TTL_S:
                _, (_, lost) = self._reserved.popitem(last=False)
                self.spend.settle([lost], [])

    def record(self, rows: list[LedgerRow]) -> None:
        self.ledger.record(rows)
        self.metrics.observe(rows)
        with self._lock:
            reservations = [self._reserved.pop(request_id)[1] for request_id in {row.request_id for row in rows}
                            if request_id in self._reserved]
        self.spend.settle(reservations, rows)
