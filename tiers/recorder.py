"""Where a request's rows go: the ledger, the metrics and the spend counters, from one call; and the spend
limits a request must pass before any work, reserved in the same counters."""

from __future__ import annotations

from tiers.budgets import Budgets, Reservation, SpendMeter
from tiers.ledger.rows import LedgerRow
from tiers.ledger.store import Ledger
from tiers.metrics import Metrics
from tiers.routing import Route


class Recorder:
    def __init__(self, ledger: Ledger, metrics: Metrics):
        self.ledger = ledger
        self.metrics = metrics
        self.spend = SpendMeter(ledger)
        self.budgets = Budgets()
        metrics.watch_ledger(ledger.health)

    def record(self, rows: list[LedgerRow], reservation: Reservation | None = None) -> None:
        self.ledger.record(rows)
        self.metrics.observe(rows)
        self.spend.settle(reservation, rows)

    def check_budget(self, route: Route) -> None:
        limits = self.budgets.limits(route)
        reservation, reached = self.spend.admit(limits, 0.0)
        for limit, spent in reached:
            self.metrics.budget_exceeded.labels(route.feature, self.budgets.reached(route, spent)).inc()
        for limit, spent in reached:
            if reservation is None and limit.refuse is not None:
                raise limit.refuse(spent)
