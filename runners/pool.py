"""A tier served by several replicas: one runner to dispatch, the policy and the serving layer; many to the supervisor.

A profile's tier may list `replicas:` (hardware/profile.py). Each is a runner of its own, built from the
tier's placement with the replica's keys in place (a vLLM `url` or GPU, a hosted `base_url` or key
variable, a llama.cpp `threads` share), and the supervisor health-checks and restarts each one apart
(`Runner.supervised`). The pool only chooses:

- **Balance**: the admitted replica with the fewest requests in flight for its weight; at a tie, the one
  furthest behind its weighted share (stride scheduling), so sequential traffic is shared by weight too.
- **Eject**: a replica is out while its own status is not ready (failed health checks, a dead process, a
  hosted API's open circuit), and for `ejection.cooldown_s` after `ejection.after_failures` requests in a
  row failed on it before their first byte; then one request probes it. A replica that gets ready again
  (the supervisor restarted it) comes back at once, its slate clean.
- **Retry**: a request that fails on a replica before its first byte (unreachable, overloaded, a 5xx or a
  broken answer) goes to another, each at most once: same tier, same model, so never a downgrade. A 400 is
  the request's fault and is not retried; a stream that broke after its first delta is not either.
- **Ready** while `min_ready` replicas are admitted; requests are served while any one is.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from hardware.errors import ConfigError
from hardware.profile import Device, TierPlacement
from runners.answer import Answer, Delta
from runners.base import Runner, RunnerStatus, build_runner
from runners.errors import InvalidRequest, Overloaded, RunnerFailed, TierUnavailable
from runners.request import Request
from runners.resilience import CircuitBreaker

log = logging.getLogger("tier_runner.pool")


@dataclass
class _Book:
    """What the pool keeps per replica."""

    weight: float
    breaker: CircuitBreaker
    passes: float = 0.0  # stride scheduling: grows by 1/weight per request sent
    requests: int = 0
    failures: int = 0
    ejections: int = 0


class PoolRunner(Runner):
    kind = "pool"
    Options = None

    def __init__(self, tier: int, placement: TierPlacement, members: list[tuple[Runner, float]]):
        super().__init__(tier, placement, None)
        self.members = [member for member, _ in members]
        self.kind = self.members[0].kind  # the ledger's runner column and messages name what really answers
        self.capabilities = self.members[0].capabilities
        self.min_ready = placement.min_ready
        eject = placement.ejection
        self._books = {m.replica: _Book(weight, CircuitBreaker(eject.after_failures, eject.cooldown_s))
                       for m, weight in members}

    @property
    def where(self) -> str:
        return f"tier {self.tier} ({self.model_name} on {self.kind}, a pool of {len(self.members)} replicas)"

    @property
    def startup_timeout_s(self) -> float:
        return max(m.startup_timeout_s for m in self.members)

    def supervised(self) -> list[Runner]:
        return list(self.members)

    def memory_needs(self):
        return [need for m in self.members for need in m.memory_needs()]

    # -- lifecycle: the members' own; the pool only starts and stops them together --------------------
    async def start(self) -> None:
        self.lifecycle.to("starting")
        results = await asyncio.gather(*(m.start() for m in self.members), return_exceptions=True)
        fatal = [e for e in results if isinstance(e, ConfigError)]
        if fatal:
            await self.stop()
            raise fatal[0]
        for member, result in zip(self.members, results):
            if isinstance(result, BaseException):
                log.error("%s: replica %s failed to start, will retry: %s", self.where, member.replica, result)
                if member.lifecycle.state != "failed":
                    member.mark_failed(f"{result.__class__.__name__}: {result}")
        self.lifecycle.to("ready")  # the pool runs; status() says how many replicas serve

    async def stop(self) -> None:
        self.lifecycle.to("stopped", "stopping")
        await asyncio.gather(*(m.stop() for m in self.members), return_exceptions=True)
        self.lifecycle.to("stopped")

    def status(self) -> RunnerStatus:
        if self.lifecycle.state == "stopped":
            return super().status()
        admitted = [m for m in self.members if self._admitted(m)]
        states = [m.status().state for m in self.members]
        detail = f"{len(admitted)} of {len(self.members)} replicas serving"
        if len(admitted) >= self.min_ready:
            state = "ready"
        elif "starting" in states:
            state = "starting"
        elif all(s == "not_configured" for s in states):
            state, detail = "not_configured", self.members[0].status().detail
        else:
            state = "failed"
            out = "; ".join(f"{m.replica}: {self._why_out(m)}" for m in self.members if m not in admitted)
            detail += f", fewer than min_ready={self.min_ready}: {out}"
        return RunnerStatus(state=state, model=self.model_name, runner=self.kind, detail=detail)

    def serving(self) -> bool:
        """Requests are answered while any replica is admitted, even below min_ready (that only holds /ready)."""
        return self.lifecycle.state != "stopped" and any(self._admitted(m) for m in self.members)

    def replicas(self) -> list[dict]:
        """Every replica for /ready and the metrics: its own status, or `ejected` while its circuit is open."""
        out = []
        for m in self.members:
            book, status = self._books[m.replica], m.status()
            state, detail = status.state, status.detail
            if state == "ready" and not self._admitted(m):
                state, detail = "ejected", book.breaker.describe()
            out.append({"name": m.replica, "state": state, "detail": detail, "weight": book.weight,
                        "in_flight": m.in_flight, "requests": book.requests, "failures": book.failures,
                        "ejections": book.ejections})
        return out

    # -- choosing a replica ---------------------------------------------------------------------------
    def _admitted(self, member: Runner) -> bool:
        book = self._books[member.replica]
        circuit, opened = book.breaker.state(), book.breaker.opened_at
        life = member.lifecycle
        if circuit != "closed" and life.state == "ready" and opened is not None and life.since > opened:
            book.breaker.record_success()  # restarted and ready since it was ejected: back, with a clean slate
            book.passes = min(b.passes for b in self._books.values())
            circuit = "closed"
        return member.serving() and (circuit == "closed" or (circuit == "half_open" and not book.breaker.probing))

    def _why_out(self, member: Runner) -> str:
        status = member.status()
        if status.state == "ready":
            return f"ejected, {self._books[member.replica].breaker.describe()}"
        return f"{status.state}" + (f" ({status.detail})" if status.detail else "")

    def _pick(self, tried: list[Runner], errors: list[tuple[str, Exception]], *, answering: bool = True) -> Runner:
        """The replica to try next. Only an answer counts in its `requests` (on /ready and the metrics, beside the
        ledger's rows); a token count still moves the balance."""
        order = {m.replica: i for i, m in enumerate(self.members)}
        candidates = [m for m in self.members if m not in tried and self._admitted(m)]
        if not candidates:
            raise self._exhausted(errors)
        book = self._books
        chosen = min(candidates, key=lambda m: (m.in_flight / book[m.replica].weight, book[m.replica].passes,
                                                order[m.replica]))
        mine = book[chosen.replica]
        mine.breaker.allow()  # claims the probe when half-open
        mine.passes += 1 / mine.weight
        if answering:
            mine.requests += 1
        return chosen

    def _exhausted(self, errors: list[tuple[str, Exception]]) -> Exception:
        if not errors:
            out = "; ".join(f"{m.replica}: {self._why_out(m)}" for m in self.members)
            return TierUnavailable(f"{self.where} has no replica serving: {out}; see GET /ready")
        tried = "; ".join(f"{name}: {getattr(exc, 'message', exc)}" for name, exc in errors)
        message = f"{self.where}: every replica failed before answering ({tried})"
        if all(isinstance(exc, TierUnavailable) for _, exc in errors):
            return TierUnavailable(message)
        return RunnerFailed(message + "; retry the request")

    def _failed(self, member: Runner, exc: Exception) -> None:
        book = self._books[member.replica]
        book.failures += 1
        if isinstance(exc, Overloaded):  # busy, not broken: try another, but do not eject it for that
            book.breaker.release_probe()
        else:
            was = book.breaker.state()
            book.breaker.record_failure(getattr(exc, "message", str(exc)))
            if was == "closed" and book.breaker.state() == "open" or was == "half_open":
                book.ejections += 1
                log.warning("%s: replica %s ejected: %s", self.where, member.replica, book.breaker.describe())
        log.warning("%s: replica %s failed before its first byte, trying another: %s", self.where, member.replica,
                    getattr(exc, "message", exc))

    def _ok(self, member: Runner) -> None:
        self._books[member.replica].breaker.record_success()

    # -- answering ------------------------------------------------------------------------------------
    async def answer(self, request: Request) -> Answer:
        tried: list[Runner] = []
        errors: list[tuple[str, Exception]] = []
        while True:
            member = self._pick(tried, errors)
            tried.append(member)
            try:
                answer = await member.complete(request)
            except InvalidRequest:
                self._ok(member)  # it answered; the request was at fault
                raise
            except (TierUnavailable, RunnerFailed) as exc:
                self._failed(member, exc)
                errors.append((member.replica, exc))
                continue
            except BaseException:
                self._books[member.replica].breaker.release_probe()
                raise
            self._ok(member)
            return answer.model_copy(update={"replica": member.replica})

    async def answer_stream(self, request: Request) -> AsyncIterator[Delta]:
        tried: list[Runner] = []
        errors: list[tuple[str, Exception]] = []
        while True:
            member = self._pick(tried, errors)
            tried.append(member)
            deltas = member.stream(request)
            try:
                first = await anext(deltas)
            except StopAsyncIteration:
                exc = RunnerFailed(f"{member.where} ended its stream before the first event")
            except InvalidRequest:
                self._ok(member)
                await deltas.aclose()
                raise
            except (TierUnavailable, RunnerFailed) as failure:
                exc = failure
            except BaseException:
                self._books[member.replica].breaker.release_probe()
                await deltas.aclose()
                raise
            else:
                break
            await deltas.aclose()
            self._failed(member, exc)
            errors.append((member.replica, exc))
        self._ok(member)
        try:
            yield replace(first, replica=member.replica)
            async for delta in deltas:
                yield delta
        finally:
            await deltas.aclose()

    async def count_tokens(self, request: Request) -> int | None:
        """Counted by one replica; like an answer, it settles the probe it may have claimed on a half-open one."""
        member = self._pick([], [], answering=False)
        try:
            counted = await member.count_tokens(request)
        except BaseException:
            self._books[member.replica].breaker.release_probe()
            raise
        self._ok(member)
        return counted


def build_tier_runner(tier: int, placement: TierPlacement, source: str,
                      devices: dict[str, Device] | None = None) -> Runner:
    """The tier's runner: a pool when its placement lists replicas, else the one runner it names."""
    if not placement.replicas:
        return build_runner(tier, placement, source, devices)
    members = []
    for i, (name, weight, own) in enumerate(placement.replica_placements()):
        member = build_runner(tier, own, source, devices, key=f"tiers.{tier}.replicas.{i}")
        member.replica = name
        members.append((member, weight))
    kinds = {type(m).__name__ for m, _ in members}
    if len(kinds) > 1:
        raise ConfigError(f"{source}: tiers.{tier}.replicas: the replicas speak different protocols ({', '.join(sorted(kinds))}); "
                          "a pool's replicas serve one model one way: give them the same provider")
    return PoolRunner(tier, placement, members)
