"""Start every runner of a profile together, keep them healthy, and stop them all cleanly.

- `start()` checks that the profile fits this machine, then starts every runner concurrently. A
  ConfigError (a setup the operator must fix) stops the others and is raised; any other start
  failure leaves that runner `failed`, and it is retried like a crash.
- A watch task probes each runner every `restart.check_interval_s` (`Runner.check`). A runner that is
  `failed` is stopped and started again after its backoff, which doubles after each failed try from
  `restart.backoff_s` up to `restart.backoff_max_s`, and resets once it has been ready for a minute.
- `stop()` stops every runner concurrently (each drains, then ends its processes). The server calls it
  on shutdown; uvicorn turns SIGINT and SIGTERM into that shutdown.
- `ready()` gates `/ready`: every tier is ready, except an `optional` one that is `not_configured`
  (a hosted API whose key is not exported), which is not retried and holds nothing back.
- `replace()` puts a new runner in a tier's place once it is ready; the old one is no longer
  supervised, so it is never restarted.
- A pool (runners/pool.py) is one tier but several units: each replica is probed, backed off and restarted
  on its own (`Runner.supervised`), under the key `<tier>/<replica>`.

The supervisor owns the tier -> runner map; everyone else asks it (`runner`, `tiers`). It changes a
runner's state only through `Runner.mark_failed`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

from hardware.detect import Machine, detect, gib
from hardware.errors import ConfigError
from hardware.fit import Placement, check_devices, check_fit
from runners.base import Runner

log = logging.getLogger("tier_runner.supervisor")
STABLE_S = 60.0  # ready this long: the next crash starts again from the first backoff step


@dataclass
class _Restarts:
    backoff_s: float
    attempts: int = 0
    next_at: float = 0.0
    ready_since: float | None = None
    history: list[float] = field(default_factory=list)


class Supervisor:
    def __init__(self, runners: dict[int, Runner], source: str = "profile"):
        self._runners = dict(runners)
        self.source = source
        self._watch: asyncio.Task | None = None
        self._restarts: dict[str, _Restarts] = {}
        self._busy: set[str] = set()  # units being restarted

    async def start(self) -> None:
        if os.environ.get("TIER_RUNNER_SKIP_FIT_CHECK") != "1":
            placements = check_fits(self._runners, self.source)
            for p in placements:
                log.info("fit: %s holds tiers %s: needs %s of %s", p.where, p.tiers, gib(p.need), gib(p.capacity))
        results = await asyncio.gather(*(r.start() for r in self._runners.values()), return_exceptions=True)
        fatal = [e for e in results if isinstance(e, ConfigError)]
        if fatal:
            await self.stop()
            raise fatal[0]
        for (tier, runner), result in zip(self._runners.items(), results):
            if isinstance(result, BaseException):
                log.error("tier %s (%s) failed to start, will retry: %s", tier, runner.kind, result)
                if runner.lifecycle.state != "failed":
                    runner.mark_failed(f"{result.__class__.__name__}: {result}")
            status = runner.status()
            if status.state == "not_configured":
                log.warning("tier %s (%s on %s) is not configured: %s; %s", tier, runner.model_name, runner.kind,
                            status.detail, "it is optional: the gateway gets ready without it, and its requests "
                            "answer 503" if runner.placement.optional else "GET /ready answers 503 until it is")
            else:
                log.info("tier %s %s: %s on %s %s", tier, status.state, runner.model_name, runner.kind, status.detail)
        self._watch = asyncio.create_task(self._watch_loop())

    def runner(self, tier: int) -> Runner | None:
        return self._runners.get(tier)

    def tiers(self) -> list[int]:
        return sorted(self._runners)

    def ready(self) -> bool:
        """Every tier ready, but for optional ones that are not configured."""
        return all((state := r.status().state) == "ready" or (r.placement.optional and state == "not_configured")
                   for r in self._runners.values())  # status(), not the lifecycle: a pool's is its replicas'

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await asyncio.gather(*(r.stop() for r in self._runners.values()), return_exceptions=True)

    async def replace(self, tier: int, runner: Runner, ready_timeout_s: float) -> Runner | None:
        """Start `runner`, wait until it is ready, then put it in place of the tier's current one (returned,
        still running: the caller drains and stops it). A runner that does not get ready is stopped and the
        tier keeps its old one (ConfigError with the reason)."""
        await self._restarts_done(tier)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout_s
        try:
            await runner.start()
            while runner.status().state == "starting" and loop.time() < deadline:
                await asyncio.sleep(0.2)
        except asyncio.CancelledError:  # the server is shutting down mid-swap: the new runner must not outlive it
            await asyncio.shield(runner.stop())
            raise
        except Exception as exc:
            await runner.stop()
            raise ConfigError(f"tier {tier}: the new runner failed to start: {exc.__class__.__name__}: {exc}") from None
        if not runner.serving():
            status = runner.status()
            await runner.stop()
            why = f"still {status.state} after {ready_timeout_s:.0f} s" if status.state == "starting" else status.state
            raise ConfigError(f"tier {tier}: the new runner did not become ready ({why}): {status.detail}")
        await self._restarts_done(tier)  # one may have begun while the new runner got ready; no await after this
        old = self._runners.get(tier)
        self._runners[tier] = runner
        for unit in [u for u in self._restarts if u.split("/")[0] == str(tier)]:
            del self._restarts[unit]
        return old

    async def _restarts_done(self, tier: int) -> None:
        """Until no restart of the tier's runner (or of a replica of its pool) is under way."""
        while any(unit.split("/")[0] == str(tier) for unit in self._busy):
            await asyncio.sleep(0.1)

    def restarts(self, tier: int, replica: str = "") -> int:
        """Restarts so far of a tier's runner, or of one replica of its pool."""
        book = self._restarts.get(f"{tier}/{replica}" if replica else str(tier))
        return book.attempts if book else 0

    def units(self) -> dict[str, Runner]:
        """What is supervised one by one: `<tier>` for a runner of its own, `<tier>/<replica>` for a pool's."""
        return {f"{tier}/{r.replica}" if r.replica else str(tier): r
                for tier, runner in self._runners.items() for r in runner.supervised()}

    def _book(self, unit: str, runner: Runner) -> _Restarts:
        book = self._restarts.get(unit)
        if book is None:
            book = self._restarts[unit] = _Restarts(runner.placement.restart.backoff_s)
        return book

    async def _watch_loop(self) -> None:
        while True:
            units = self.units()
            await asyncio.sleep(min((r.placement.restart.check_interval_s for r in units.values()), default=1.0))
            for unit, runner in list(self.units().items()):
                if unit in self._busy:
                    continue
                try:
                    await runner.check()
                except Exception as exc:  # a probe must never end the watch
                    log.warning("tier %s health check raised %s", unit, exc)
                self._consider(unit, runner)

    def _consider(self, unit: str, runner: Runner) -> None:
        state, now = runner.lifecycle.state, time.monotonic()
        book = self._book(unit, runner)
        policy = runner.placement.restart
        if state == "ready":
            book.ready_since = book.ready_since or now
            if now - book.ready_since > STABLE_S:
                book.backoff_s = policy.backoff_s
            return
        book.ready_since = None
        if state != "failed":
            return
        if book.next_at == 0.0:
            book.next_at = now + book.backoff_s
            log.warning("tier %s (%s) failed: %s; restarting in %.1f s", unit, runner.kind, runner.status().detail,
                        book.backoff_s)
        elif now >= book.next_at:
            self._busy.add(unit)
            asyncio.create_task(self._restart(unit, runner))

    async def _restart(self, unit: str, runner: Runner) -> None:
        book = self._book(unit, runner)
        policy = runner.placement.restart
        book.attempts += 1
        book.history.append(time.time())
        log.warning("tier %s (%s): restart %d", unit, runner.kind, book.attempts)
        try:
            await runner.stop()
            if self.units().get(unit) is runner:  # not replaced meanwhile: a retired runner is never restarted
                await runner.start()
        except Exception as exc:
            runner.mark_failed(f"restart {book.attempts} failed: {exc.__class__.__name__}: {exc}")
        finally:
            book.next_at = 0.0
            book.backoff_s = min(book.backoff_s * 2, policy.backoff_max_s)
            self._busy.discard(unit)


def placed(runners: dict[int, Runner]) -> list[tuple[str, Runner]]:
    """Every runner that takes a place on this machine, named for messages: "tier 2", "tier 2 (replica b)"."""
    return [(f"tier {tier}" + (f" (replica {r.replica})" if r.replica else ""), r)
            for tier, runner in sorted(runners.items()) for r in runner.supervised()]


def check_fits(runners: dict[int, Runner], source: str, machine: Machine | None = None) -> list[Placement]:
    """The profile's tiers (every replica of a pool) against this machine (or `machine`); ConfigError with the
    numbers if they do not fit."""
    machine = machine or detect()
    units = placed(runners)
    check_devices({who: (r.placement.device, r.device) for who, r in units if r.device is not None}, machine, source)
    return check_fit([need for _, r in units for need in r.memory_needs()], machine, source)
