"""Prometheus metrics, fed from the same rows as the ledger so the two always agree."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, GCCollector, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from tiers.ledger.rows import LedgerRow

LABELS = ("feature", "tier", "model", "replica")  # replica: the pool member that answered, "" without a pool
DIRECT_TIER = re.compile(r"tier:[123]")


def feature_label(row: LedgerRow) -> str:
    """A feature of the routing table, `tier:<n>`, or `unknown`: a name a client made up (an unknown model or a
    misspelt feature) never becomes a label value of its own, so the label set stays bounded."""
    if row.feature:
        return row.feature
    return row.route if DIRECT_TIER.fullmatch(row.route) else "unknown"


class Metrics:
    """Registries of this app (not the global one), so tests and several apps in a process stay apart.

    `registry` holds what is counted (counters, histograms); `live` the collectors that read current state at
    each scrape (ledger, cache, replicas, shared state). Under `serve --workers N` (PROMETHEUS_MULTIPROC_DIR set
    before prometheus_client is imported) every worker's counts go to files there and a scrape of any worker
    sums them all, a killed worker's too; the live state is the answering worker's.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.live = CollectorRegistry()
        self._exposed = CollectorRegistry()
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:
            MultiProcessCollector(self._exposed, path=folder)
        else:
            self._exposed.register(self.registry)
        self._exposed.register(self.live)
        GCCollector(registry=self.live)  # python_gc_collections_total: how often the collector ran (tiers/heap.py)
        r = self.registry
        self.requests = Counter("tier_requests", "Requests answered (final attempts)", LABELS, registry=r)
        self.attempts = Counter("tier_attempts", "Attempts on a tier, retries and escalations included", LABELS,
                                registry=r)
        self.latency = Histogram("tier_request_latency_seconds", "Attempt latency", LABELS, registry=r,
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.tokens = Counter("tier_tokens", "Tokens", LABELS + ("kind",), registry=r)
        self.cost = Counter("tier_cost_usd", "Spend in USD", LABELS, registry=r)
        self.cache_hits = Counter("tier_cache_hits", "Answers served from the semantic cache", LABELS, registry=r)
        self.escalations = Counter("tier_escalations", "Requests escalated to a stronger tier", LABELS, registry=r)
        self.gate_failures = Counter("tier_gate_failures", "Attempts that failed their gate", LABELS + ("gate",),
                                     registry=r)
        self.errors = Counter("tier_errors", "Attempts that ended in an error", LABELS + ("error_type",), registry=r)
        self.budget_exceeded = Counter("tier_budget_exceeded", "Requests seen over their feature budget",
                                       ("feature", "action"), registry=r)
        self._children: dict[tuple, object] = {}

    def watch_ledger(self, health: Callable[[], dict]) -> None:
        """The ledger's state and dead-letter count, read from `health()` at each scrape."""
        self.live.register(_LedgerCollector(health))

    def observe(self, rows: list[LedgerRow]) -> None:
        child = self._child
        for row in rows:
            labels = (feature_label(row), str(row.serving_tier or ""), row.model or "", row.replica or "")
            child(self.attempts, labels).inc()
            if row.final:
                child(self.requests, labels).inc()
                if row.escalated:
                    child(self.escalations, labels).inc()
            child(self.latency, labels).observe(row.latency_ms / 1000)
            child(self.tokens, (*labels, "prompt")).inc(row.prompt_tokens)
            child(self.tokens, (*labels, "completion")).inc(row.completion_tokens)
            child(self.cost, labels).inc(row.cost_usd)
            if row.cache_hit:
                child(self.cache_hits, labels).inc()
            if row.gate_passed is False:
                child(self.gate_failures, (*labels, row.gate or "")).inc()
            if row.error_type:
                child(self.errors, (*labels, row.error_type)).inc()

    def _child(self, metric, labels: tuple[str, ...]):
        """A metric's child for a label set, looked up once: `labels()` locks and checks its arguments on every
        call, eight times per request. Label sets are bounded (feature_label), so this map is too."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def render(self) -> bytes:
        return generate_latest(self._exposed)


class _LedgerCollector:
    STATES = ("ok", "degraded", "failed")

    def __init__(self, health: Callable[[], dict]):
        self.health = health

    def collect(self):
        health = self.health()
        state = GaugeMetricFamily("tier_ledger_state", "1 for the ledger's current state: ok, degraded (the "
                                  "database does not take rows; they stay spooled) or failed (the writer stopped)",
                                  labels=["state"])
        for name in self.STATES:
            state.add_metric([name], 1.0 if health["state"] == name else 0.0)
        yield state
        yield GaugeMetricFamily("tier_ledger_dead_letters", "Spooled lines set aside in the dead-letter file",
                                value=health["dead_letters"])
