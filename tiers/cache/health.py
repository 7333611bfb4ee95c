"""Whether the cache's backend answers, for /ready and /metrics: a failing cache degrades to no cache.

Every backend call reports here: a failure marks the cache `degraded` and counts it by operation
(lookup, store, invalidate, sweep); the next call that succeeds marks it `ok` again. The periodic
sweep doubles as a probe, so a Redis that comes back shows as `ok` without traffic.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("tier_runner.cache")

OPERATIONS = ("lookup", "store", "invalidate", "sweep")


class CacheHealth:
    def __init__(self, backend: str):
        self.backend = backend
        self.errors = dict.fromkeys(OPERATIONS, 0)
        self.detail: str | None = None
        self._lock = threading.Lock()

    def ok(self) -> None:
        if self.detail is not None:
            log.info("the cache's %s backend answers again", self.backend)
            self.detail = None

    def failed(self, op: str, exc: BaseException) -> None:
        with self._lock:
            self.errors[op] += 1
        self.detail = f"{op} failed: {exc.__class__.__name__}"
        log.warning("cache %s failed on the %s backend, serving without the cache: %s: %s", op, self.backend,
                    exc.__class__.__name__, exc)

    def report(self) -> dict:
        state = "ok" if self.detail is None else "degraded"
        return {"backend": self.backend, "state": state, "detail": self.detail or "", "errors": dict(self.errors)}


class CacheCollector:
    """`tier_cache_state{state}` and `tier_cache_errors_total{op}`, read at each scrape."""

    def __init__(self, health: CacheHealth):
        self.health = health

    def collect(self):
        report = self.health.report()
        state = GaugeMetricFamily("tier_cache_state", "1 for the cache's current state: ok, or degraded (its "
                                  "backend fails; requests are answered by the model)", labels=["state"])
        for name in ("ok", "degraded"):
            state.add_metric([name], 1.0 if report["state"] == name else 0.0)
        yield state
        errors = CounterMetricFamily("tier_cache_errors", "Cache backend calls that failed, by operation",
                                     labels=["op"])
        for op, count in report["errors"].items():
            errors.add_metric([op], count)
        yield errors
