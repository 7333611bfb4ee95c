"""Where a request's rows go: the ledger, the metrics and the spend counters, from one call; and, before any
work, the spend limits a request must pass, reserved in the same counters until its rows settle them. With a
shared state (`--redis-url`) the counters every replica admits against are in Redis (tiers/shared/spend.py)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from tiers.auth import ClientKey
from tiers.budgets import Budgets, SpendMeter
from tiers.ledger.rows import LedgerRow
from tiers.ledger.store import Ledger
from tiers.metrics import Metrics
from tiers.routing import Route
from tiers.shared.spend import SharedSpend
from tiers.shared.state import SharedState

# Every admitted request leaves rows, which settle its reservation; one that somehow did not is dropped
# after this long (longer than any answer may take), so a lost reservation cannot block a budget for good.
RESERVATION_TTL_S = 3600.0


class Recorder:
    def __init__(self, ledger: Ledger, metrics: Metrics, shared: SharedState | None = None):
        self.ledger = ledger
        self.metrics = metrics
        self.spend = SpendMeter(ledger)
        self.shared = SharedSpend(shared, self.spend, RESERVATION_TTL_S) if shared is not None else None
        self.budgets = Budgets()
        self._reserved: OrderedDict[str, tuple[float, object]] = OrderedDict()  # request id -> (when, reservation)
        self._lock = threading.Lock()
        metrics.watch_ledger(ledger.health)

    async def admit(self, route: Route, key: ClientKey | None, request_id: str, reserve_usd: float) -> None:
        """The feature's budget and the key's spend cap, checked and charged `reserve_usd` in one step (see
        tiers/budgets.py); raises BudgetExceeded or RateLimited for a blocking limit that is reached. The
        reservation is settled when rows with this request id are recorded."""
        limits = self.budgets.limits(route) + (key.spend_limits() if key else [])
        if self.shared is not None:
            reservation, reached = await self.shared.admit(limits, reserve_usd, key, request_id)
        else:
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
                self._settle([lost], [])

    def record(self, rows: list[LedgerRow]) -> None:
        self.ledger.record(rows)
        self.metrics.observe(rows)
        with self._lock:
            reservations = [self._reserved.pop(request_id)[1] for request_id in {row.request_id for row in rows}
                            if request_id in self._reserved]
        self._settle(reservations, rows)

    def _settle(self, reservations: list, rows: list[LedgerRow]) -> None:
        (self.shared or self.spend).settle(reservations, rows)
