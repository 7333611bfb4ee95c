"""Where a request's rows go: the ledger, the metrics and the spend counters, from one call."""

from __future__ import annotations

from tiers.budgets import Budgets, SpendMeter
from tiers.ledger.rows import LedgerRow
from tiers.ledger.store import Ledger
from tiers.metrics import Metrics
from tiers.routing import Route


class Recorder:
    def __init__(self, ledger: Ledger, metrics: Metrics):
        self.ledger = ledger
        self.metrics = metrics
        self.spend = SpendMeter(ledger)
        self.budgets = Budgets(self.spend)

    def record(self, rows: list[LedgerRow]) -> None:
        self.ledger.record(rows)
        self.metrics.observe(rows)
        self.spend.add(rows)

    def check_budget(self, route: Route) -> None:
        action = self.budgets.check(route)
        if action is not None:
            self.metrics.budget_exceeded.labels(route.feature, action).inc()
