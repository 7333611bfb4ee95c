"""A pool's replicas on /metrics: each one's state and requests in flight, read from the live runners at each scrape."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client.core import GaugeMetricFamily

from runners.pool import PoolRunner

STATES = ("ready", "ejected", "starting", "failed", "not_configured", "stopped")


class ReplicaCollector:
    """`tier_replica_state{tier,replica,state}` (1 for its state) and `tier_replica_in_flight{tier,replica}`."""

    def __init__(self, runners: Callable[[], object]):
        self.runners = runners  # the TierRunners in force (a reload may replace a pool)

    def collect(self):
        state = GaugeMetricFamily("tier_replica_state", "1 for each pool replica's state: ready, ejected (its circuit "
                                  "is open after failed requests), starting, failed, ...", labels=["tier", "replica",
                                                                                                   "state"])
        busy = GaugeMetricFamily("tier_replica_in_flight", "Requests a pool replica is answering now",
                                 labels=["tier", "replica"])
        runners = self.runners()
        for tier in runners.tiers():
            pool = runners.get(tier)
            if not isinstance(pool, PoolRunner):
                continue
            for replica in pool.replicas():
                for name in STATES:
                    state.add_metric([str(tier), replica["name"], name], 1.0 if replica["state"] == name else 0.0)
                busy.add_metric([str(tier), replica["name"]], replica["in_flight"])
        yield state
        yield busy
