"""Spend caps and feature budgets in Redis: every replica checks, reserves and settles against the same figures.

The semantics are the local meter's (tiers/budgets.py): admitting a request checks each of its limits and
reserves its worst-case cost against all of them in one step, here one script over every replica's
reservations (tiers/shared/scripts.py), so a burst spread over replicas cannot all pass one check; a limit
is reached when spend plus what is reserved is at or over it. Spend is a lower bound of the period's: the
larger of what replicas settled into Redis and the largest ledger read any of them reported (each
replica's own meter reads the ledger in the background, as it does alone).

This replica's own meter books every row too, so when Redis does not answer a request is admitted against
it (fail_open, and always for a feature budget, which belongs to no key) or refused (a fail_closed key). A
settle that could not reach Redis is replayed once it answers; a reservation never settled expires after
`ttl_s`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from tiers.auth import ClientKey
from tiers.budgets import Limit, Reservation, SpendMeter, period_end, period_start
from tiers.ledger.rows import LedgerRow
from tiers.shared.limits import outage
from tiers.shared.state import SharedState, SharedUnavailable


@dataclass
class SharedReservation:
    id: str
    request_id: str  # its rows are what it books
    limits: list[Limit]
    starts: list[float]  # each limit's period start: the figure it was reserved in
    keys: list[str]  # three Redis keys per limit
    expire_at: int
    settled: bool = False


class SharedSpend:
    def __init__(self, shared: SharedState, local: SpendMeter, ttl_s: float):
        self.shared, self.local, self.ttl_s = shared, local, ttl_s

    def _keys(self, limit: Limit, start: float) -> list[str]:
        figure = self.shared.key("spend", limit.column, limit.value, int(start))
        return [figure, f"{figure}:res", f"{figure}:resv"]

    async def admit(self, limits: list[Limit], usd: float, key: ClientKey | None, request_id: str
                    ) -> tuple[Reservation | SharedReservation | None, list[tuple[Limit, float]]]:
        """As SpendMeter.admit, across replicas; `key` decides what a Redis outage means for the request."""
        if not limits:
            return self.local.admit(limits, usd)
        starts = [period_start(limit.period) for limit in limits]
        keys = [k for limit, start in zip(limits, starts) for k in self._keys(limit, start)]
        expire_at = int(max(period_end(limit.period) for limit in limits)) + 86400
        reservation_id = uuid.uuid4().hex
        args: list = [reservation_id, usd, self.ttl_s, expire_at]
        for limit in limits:  # this replica's own figure (its last ledger read) keeps the shared floor current
            args += [limit.usd, 1 if limit.refuse is not None else 0, self.local.spent(limit.column, limit.value,
                                                                                       limit.period)]
        try:
            out = await self.shared.script("spend", "SPEND_ADMIT", keys, args)
        except SharedUnavailable as why:
            if key is not None:
                outage(self.shared, key, why)  # raises for a fail_closed key
            else:
                self.shared.decided("fail_open")
            return self.local.admit(limits, usd)
        reached = [(limit, float(out[1 + 2 * i])) for i, limit in enumerate(limits) if int(out[2 + 2 * i])]
        if int(out[0]) == 0:
            return None, reached
        return SharedReservation(reservation_id, request_id, limits, starts, keys, expire_at), reached

    def settle(self, reservations: list, rows: list[LedgerRow]) -> None:
        """Release each reservation once and book its request's rows: here always, in Redis where Redis reserved."""
        self.local.settle([r for r in reservations if isinstance(r, Reservation)], rows)
        for reservation in reservations:
            if not isinstance(reservation, SharedReservation) or reservation.settled:
                continue
            reservation.settled = True
            own = [row for row in rows if row.request_id == reservation.request_id]
            costs = [sum(row.cost_usd for row in own if getattr(row, limit.column) == limit.value and row.ts >= start)
                     for limit, start in zip(reservation.limits, reservation.starts)]
            self.shared.later("settle", self.shared.work("SPEND_SETTLE", reservation.keys,
                                                         [reservation.id, reservation.expire_at, *costs]), replay=True)
