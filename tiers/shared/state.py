"""One Redis that every gateway replica shares (`--redis-url`), and what happens when it does not answer.

Every call goes through `SharedState.call`. A call that fails (Redis down, a timeout) opens a circuit: for
`retry_s` no call waits on Redis, then one probes it (as does a PING every `probe_s`, so /ready shows an
outage and a recovery without traffic). A failed or skipped call raises `SharedUnavailable`; each caller
turns that into its documented degraded behaviour (a key's `on_redis_outage`: fail_open enforces the limits
on this replica alone, fail_closed answers 503), never a 500. The state shows on /ready (`shared_state`) and
on /metrics (`tier_shared_state`, `tier_shared_errors_total`, `tier_shared_outage_decisions_total`).

Neither the URL (it may hold a password) nor any key appears in /ready, the metrics or the log.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from runners.resilience import CircuitBreaker
from tiers.shared import scripts

log = logging.getLogger("tier_runner.shared")

OPERATIONS = ("rate_limit", "spend", "settle", "announce", "ping")
DECISIONS = ("fail_open", "fail_closed")
MAX_REPLAYS = 10_000  # settles waiting for Redis to come back; past this, reservations expire on their own


class SharedUnavailable(Exception):
    """Redis did not answer (or its circuit is open): the caller degrades as documented."""


class SharedState:
    def __init__(self, url: str, *, timeout_s: float = 0.5, retry_s: float = 1.0, probe_s: float = 2.0):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url = url
        self.replica_id = uuid.uuid4().hex[:12]  # tells this gateway's own announcements from the others'
        # No retries inside redis-py: a script that books spend must run once, and an outage must show at once.
        self.redis = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                             retry=Retry(NoBackoff(), 0))
        self._scripts = {name: self.redis.register_script(getattr(scripts, name))
                         for name in ("RATE_ADMIT", "RATE_CHARGE", "SPEND_ADMIT", "SPEND_SETTLE")}
        self.breaker = CircuitBreaker(failure_threshold=1, cooldown_s=retry_s)
        self.probe_s = probe_s
        self.errors = dict.fromkeys(OPERATIONS, 0)
        self.decisions = dict.fromkeys(DECISIONS, 0)
        self.detail: str | None = None
        self._background: set[asyncio.Task] = set()
        self._replays: list[tuple[str, Callable[[], Awaitable]]] = []
        self._prober: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def key(self, *parts: object) -> str:
        return ":".join((scripts.PREFIX, *map(str, parts)))

    async def call(self, op: str, work: Callable[[], Awaitable]):
        from redis.exceptions import RedisError

        if not self.breaker.allow():
            raise SharedUnavailable(self.detail or "Redis is not answering")
        try:
            result = await work()
        except (RedisError, OSError) as exc:
            self.breaker.record_failure(exc.__class__.__name__)
            self.errors[op] += 1
            if self.detail is None:
                log.error("shared state: Redis failed (%s: %s); limits are enforced by each key's on_redis_outage "
                          "until it answers", exc.__class__.__name__, exc)
            self.detail = f"{op} failed: {exc.__class__.__name__}"
            raise SharedUnavailable(self.detail) from None
        except BaseException:
            self.breaker.release_probe()
            raise
        self.breaker.record_success()
        if self.detail is not None:
            log.info("shared state: Redis answers again")
            self.detail = None
        return result

    def work(self, name: str, keys: list[str], args: list) -> Callable[[], Awaitable]:
        """One run of a script of tiers/shared/scripts.py, for `call` or `later`."""
        return lambda: self._scripts[name](keys=keys, args=args)

    async def script(self, op: str, name: str, keys: list[str], args: list) -> object:
        return await self.call(op, self.work(name, keys, args))

    def later(self, op: str, work: Callable[[], Awaitable], *, replay: bool = False) -> None:
        """Run `work` off the request path (settling spend, charging tokens); a failure is counted, not raised,
        and with `replay` (work that is safe to run twice) it runs again once Redis answers a probe."""
        async def run() -> None:
            try:
                await self.call(op, work)
            except SharedUnavailable:
                if replay and len(self._replays) < MAX_REPLAYS:
                    self._replays.append((op, work))

        def spawn() -> None:
            task = asyncio.get_running_loop().create_task(run())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        (self._loop or asyncio.get_running_loop()).call_soon_threadsafe(spawn)  # from any thread

    def decided(self, decision: str) -> None:
        """A request admitted (fail_open) or refused (fail_closed) because Redis did not answer."""
        self.decisions[decision] += 1

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._prober = self._loop.create_task(self._probe_forever())

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self.probe_s)
            try:
                await self.call("ping", self.redis.ping)
                while self._replays:
                    op, work = self._replays[0]
                    await self.call(op, work)
                    self._replays.pop(0)
            except SharedUnavailable:
                pass

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
        await asyncio.gather(*self._background, *([self._prober] if self._prober else []), return_exceptions=True)
        await self.redis.aclose()

    def report(self) -> dict:
        return {"backend": "redis", "state": "ok" if self.detail is None else "degraded", "detail": self.detail or "",
                "errors": dict(self.errors), "outage_decisions": dict(self.decisions)}


class SharedCollector:
    """/metrics: the shared state's state, its failed calls by operation, and the requests an outage decided."""

    def __init__(self, shared: SharedState):
        self.shared = shared

    def collect(self):
        report = self.shared.report()
        state = GaugeMetricFamily("tier_shared_state", "1 for the shared state's (Redis) current state: ok, or "
                                  "degraded (limits are enforced per replica, or refused, by each key's "
                                  "on_redis_outage)", labels=["state"])
        for name in ("ok", "degraded"):
            state.add_metric([name], 1.0 if report["state"] == name else 0.0)
        yield state
        errors = CounterMetricFamily("tier_shared_errors", "Shared-state (Redis) calls that failed, by operation",
                                     labels=["op"])
        for op, count in report["errors"].items():
            errors.add_metric([op], count)
        yield errors
        decisions = CounterMetricFamily("tier_shared_outage_decisions", "Requests admitted on this replica's own "
                                        "limits (fail_open) or refused (fail_closed) while Redis did not answer",
                                        labels=["decision"])
        for decision, count in report["outage_decisions"].items():
            decisions.add_metric([decision], count)
        yield decisions
