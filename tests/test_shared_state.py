"""Shared state on a real Redis, two "replicas" in one process: a key's rate limit and spend cap hold across both,
settles are never booked twice, an outage degrades by each key's `on_redis_outage`, reloads are announced.

Two real gateway processes on one PostgreSQL and one Redis are in test_shared_state_e2e.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest
import redis

from tests.conftest import RedisServer
from tiers.auth import ClientKey, RateLimit, SpendCap
from tiers.budgets import Limit, SpendMeter
from tiers.errors import LimitsUnavailable, RateLimited
from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.store import Ledger
from tiers.shared.announce import ReloadAnnouncer
from tiers.shared.limits import SharedLimiter
from tiers.shared.spend import SharedReservation, SharedSpend
from tiers.shared.state import SharedState


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def key(id: str = "bot", mode: str = "fail_open", **limit) -> ClientKey:
    return ClientKey(id=id, sha256=f"{hash(id) & (2**256 - 1):064x}", rate_limit=RateLimit(**limit),
                     spend_cap=SpendCap(usd=1.0), on_redis_outage=mode)


def two(url: str, **kw) -> tuple[SharedState, SharedState]:
    return SharedState(url, **kw), SharedState(url, **kw)


def test_a_key_limited_to_30_requests_a_minute_gets_30_across_two_replicas(redis_server):
    async def go():
        a, b = two(redis_server.url)
        limiters = [SharedLimiter(a), SharedLimiter(b)]
        bot = key(requests_per_minute=30)
        admitted, waits = 0, []
        for i in range(60):
            try:
                await limiters[i % 2].admit(bot)
                admitted += 1
            except RateLimited as exc:
                waits.append(exc.retry_after)
        return admitted, waits

    admitted, waits = asyncio.run(go())
    assert admitted == 30  # each replica alone would have admitted 30
    assert 0 < min(waits) and max(waits) <= 2.0  # one request refills in 2 s at 30 a minute


def test_tokens_charged_on_one_replica_count_on_the_other(redis_server):
    async def go():
        a, b = two(redis_server.url)
        la, lb = SharedLimiter(a), SharedLimiter(b)
        bot = key(tokens_per_minute=100)
        await la.admit(bot)
        la.charge(bot, 150)
        await asyncio.sleep(0.1)  # charges are settled off the request path
        with pytest.raises(RateLimited, match="over 100 tokens per minute") as refused:
            await lb.admit(bot)
        return refused.value.retry_after

    assert 30 <= asyncio.run(go()) <= 31  # 51 tokens short at 100 a minute


def row(cost: float, request_id: str, key_id: str = "bot") -> LedgerRow:
    return LedgerRow(attempt_id=new_attempt_id(), request_id=request_id, ts=time.time(), route="feature:f",
                     feature="f", client_key_id=key_id, cost_usd=cost)


def test_a_spend_cap_holds_across_replicas_and_settles_book_once(redis_server, tmp_path):
    async def go():
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "spool")
        ledger.migrate()
        a, b = two(redis_server.url)
        spend = [SharedSpend(a, SpendMeter(ledger), 3600), SharedSpend(b, SpendMeter(ledger), 3600)]
        bot = key()
        cap = bot.spend_limits()
        results = [await spend[i % 2].admit(cap, 0.3, bot, f"req_{i}") for i in range(6)]
        admitted = [r for r, _ in results if r is not None]
        assert len(admitted) == 4  # 0, 0.3, 0.6 and 0.9 are under $1; at 1.2 reserved, the fifth is refused
        assert all(isinstance(r, SharedReservation) for r in admitted)
        rows = [row(0.05, "req_0"), row(0.02, "req_1")]
        spend[0].settle(admitted[:2], rows)
        spend[0].settle(admitted[:2], rows)  # once only
        spend[1].settle([dataclasses.replace(admitted[0], settled=False)], rows)  # a replayed settle: not booked twice
        await asyncio.sleep(0.1)
        again, reached = await spend[1].admit(cap, 0.3, bot, "req_6")  # 0.6 reserved + 0.07 booked + 0.3 < 1
        figure = redis.Redis.from_url(redis_server.url).hgetall(admitted[0].keys[0])
        ledger.close()
        return again, reached, figure

    again, reached, figure = asyncio.run(go())
    assert again is not None and reached == []
    assert abs(float(figure[b"booked"]) - 0.07) < 1e-9


def test_a_redis_outage_admits_fail_open_keys_on_local_limits_and_refuses_fail_closed_ones(redis_server, tmp_path):
    async def go():
        shared = SharedState(redis_server.url, retry_s=0.2, probe_s=0.1)
        shared.start()
        limiter = SharedLimiter(shared)
        opened, closed = key("open-bot", requests_per_minute=2), key("closed-bot", "fail_closed", requests_per_minute=2)
        await limiter.admit(opened)  # through Redis; this replica's own bucket follows
        redis_server.stop()
        outcomes = []
        for _ in range(3):
            try:
                await limiter.admit(opened)
                outcomes.append("admitted")
            except RateLimited:
                outcomes.append("limited")
        with pytest.raises(LimitsUnavailable, match="closed-bot.*fail_closed") as refused:
            await limiter.admit(closed)
        during = shared.report()
        redis_server.start()
        deadline = time.monotonic() + 5
        while shared.report()["state"] != "ok" and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        after = shared.report()
        await limiter.admit(closed)
        await shared.close()
        return outcomes, refused.value, during, after

    outcomes, refused, during, after = asyncio.run(go())
    assert outcomes == ["admitted", "limited", "limited"]  # the local bucket had one of its two left
    assert refused.status_code == 503 and refused.retry_after > 0
    assert during["state"] == "degraded" and during["outage_decisions"] == {"fail_open": 3, "fail_closed": 1}
    assert during["errors"]["rate_limit"] >= 1 and redis_server.url not in str(during)
    assert after["state"] == "ok"


class StubConfig:
    def __init__(self):
        self.reloads = 0

    async def reload_routing(self):
        self.reloads += 1

    async def reload_profile(self):
        return []


def test_a_reload_is_announced_to_the_other_replicas_only(redis_server):
    async def go():
        (a, b), (ca, cb) = two(redis_server.url), (StubConfig(), StubConfig())
        announcers = [ReloadAnnouncer(a, ca), ReloadAnnouncer(b, cb)]
        for each in announcers:
            each.start()
        await asyncio.sleep(0.3)  # both subscribed
        heard = await announcers[0].announce()
        deadline = time.monotonic() + 5
        while cb.reloads == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for each in announcers:
            await each.stop()
        return heard, ca.reloads, cb.reloads

    assert asyncio.run(go()) == (1, 0, 1)


def test_limit_keys_of_other_prefixes_are_untouched(redis_server):
    """The shared state and the cache share a Redis: each keeps to its own prefix."""
    client = redis.Redis.from_url(redis_server.url)
    client.set("trc:v2:bytes", 7)

    async def go():
        await SharedLimiter(SharedState(redis_server.url)).admit(key(requests_per_minute=5))

    asyncio.run(go())
    assert client.get("trc:v2:bytes") == b"7"
    assert {k.decode() for k in client.keys("trs:*")} == {"trs:v1:rate:bot:requests"}
    assert Limit  # (the spend limits are the budgets module's own type)


def test_a_replica_whose_clock_runs_ahead_keeps_the_others_reservations(redis_server, tmp_path, monkeypatch):
    """Reservations expire by Redis's clock: B's clock an hour ahead must not expire A's 60 s reservations."""
    async def go():
        ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "spool")
        ledger.migrate()
        a, b = two(redis_server.url)
        spend_a, spend_b = SharedSpend(a, SpendMeter(ledger), 60), SharedSpend(b, SpendMeter(ledger), 60)
        bot = key()
        cap = bot.spend_limits()
        held = [await spend_a.admit(cap, 0.3, bot, f"req_{i}") for i in range(4)]  # $1.20 reserved on A: cap reached
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # B's clock (this process's) runs an hour ahead
        refused, reached = await spend_b.admit(cap, 0.3, bot, "req_b")
        monkeypatch.setattr(time, "time", real)
        ledger.close()
        return held, refused, reached

    held, refused, reached = asyncio.run(go())
    assert all(r is not None for r, _ in held)
    assert refused is None and [limit.column for limit, _ in reached] == ["client_key_id"]
