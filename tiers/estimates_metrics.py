"""Per-feature failure estimates on /metrics, the audit's own numbers: the feedback-based rate (errors, gate
rejections, negative feedback) beside the shadow's disagreement rate, each with its 95% Wilson interval, and
the audit's flags (DRIFT among them) as gauges to alert on.

The audit reads the ledger's window, which is too slow for a scrape; a background thread recomputes it every
`refresh_s` when scraped and each scrape answers with the last result (nothing until the first one is done).
A ledger that cannot be read keeps the last figures, which the ledger's own state gauge explains.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from prometheus_client.core import GaugeMetricFamily

from hardware.errors import TierRunnerError
from tiers.audit import Audit, run_audit
from tiers.ledger.store import Ledger
from tiers.routing import RoutingTable

log = logging.getLogger("tier_runner.estimates")
WINDOW_S = 7 * 86400


class EstimatesCollector:
    def __init__(self, ledger: Ledger, routing: Callable[[], RoutingTable], refresh_s: float = 15.0,
                 window_s: float = WINDOW_S):
        self.ledger, self.routing = ledger, routing
        self.refresh_s, self.window_s = refresh_s, window_s
        self._audit: Audit | None = None
        self._computed_at = -float("inf")
        self._lock = threading.Lock()
        self._running = False

    def collect(self):
        self._refresh_when_due()
        audit = self._audit
        rate = GaugeMetricFamily("tier_failure_estimate", "Failure rate per feature over the audit window and its 95% "
                                 "Wilson interval: source feedback (errors, gate rejections, negative feedback) or "
                                 "shadow (disagreement of the shadow tier)", labels=["feature", "source", "stat"])
        flags = GaugeMetricFamily("tier_feature_flag", "1 for each flag the audit raises on a feature now (INVERTED, "
                                  "OVERSPEND, OVER_BUDGET, NO_DATA, DRIFT)", labels=["feature", "flag"])
        for row in audit.rows if audit else []:
            sources = [("feedback", row.rate)] + ([("shadow", row.shadow.rate)] if row.shadow else [])
            for source, r in sources:
                if r.n:
                    low, high = r.interval
                    for stat, value in (("rate", r.value), ("low", low), ("high", high)):
                        rate.add_metric([row.feature, source, stat], value)
            for flag in row.flags:
                flags.add_metric([row.feature, flag], 1.0)
        yield rate
        yield flags

    def _refresh_when_due(self) -> None:
        with self._lock:
            if self._running or time.monotonic() - self._computed_at < self.refresh_s:
                return
            self._running = True
        threading.Thread(target=self._refresh, name="estimates-refresh", daemon=True).start()

    def _refresh(self) -> None:
        try:
            now = time.time()
            self._audit = run_audit(self.ledger.engine, self.routing(), now - self.window_s, now)
        except TierRunnerError as exc:  # the ledger is down: keep the last figures
            log.warning("failure estimates not refreshed: %s", exc)
        finally:
            with self._lock:
                self._running, self._computed_at = False, time.monotonic()
