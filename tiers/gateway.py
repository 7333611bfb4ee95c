"""The serving layer: turns a typed request into a route, a policy decision and an answer. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from hardware.errors import ConfigError
from runners.errors import InvalidRequest, TierUnavailable
from hardware.profile import Price, load_profile
from runners.base import Runner, build_runner
from runners.supervisor import Supervisor
from runners.protocol import ChatCompletionChunk, ChatCompletionRequest, Model, ModelList, now
from tiers.policy import Attempt, Outcome, answer_gated, pick_runner
from tiers.routing import Route, RoutingTable, load_routing, resolve_route
from tiers.settings import Settings

log = logging.getLogger("tier_runner.gateway")


class ReloadRejected(InvalidRequest):
    code = "invalid_config"


@dataclass(frozen=True)
class Dispatch:
    """Where a request goes, decided once at its start: a reload mid-request does not change it."""

    route: Route
    runner: Runner
    downgraded: bool

    @property
    def gated(self) -> bool:
        return bool(self.route.spec and self.route.spec.gates())


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.routing: RoutingTable = load_routing(settings.routing)
        self._routing_stamp = _stamp(settings)
        self.profile_path, self.profile = load_profile(settings.profile)
        source = str(self.profile_path)
        self.runners: dict[int, Runner] = {
            tier: build_runner(tier, placement, source, self.profile.devices)
            for tier, placement in self.profile.tiers.items()
        }
        self.supervisor = Supervisor(self.runners, source)
        self.started_at = now()
        self._watcher: asyncio.Task | None = None
        self._profile_stamp = _file_stamp(self.profile_path)
        self._retiring: set[asyncio.Task] = set()

    @property
    def profile_name(self) -> str:
        return self.profile_path.stem

    async def start(self) -> None:
        """Start every runner through the supervisor (which also restarts failed ones), then watch the routing file."""
        await self.supervisor.start()
        if self.settings.reload_interval_s > 0:
            self._watcher = asyncio.create_task(self._watch_files())

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        for task in list(self._retiring):
            task.cancel()
        await self.supervisor.stop()

    # -- live reload of the routing table ---------------------------------------------------------
    def reload_routing(self) -> RoutingTable:
        """Swap in the routing table from disk; a bad file is rejected and the old table keeps serving."""
        stamp = _stamp(self.settings)
        try:
            table = load_routing(self.settings.routing)
        except ConfigError as exc:
            self._routing_stamp = stamp  # do not retry the same broken file every tick
            log.error("routing reload rejected, the previous table keeps serving: %s", exc.message)
            raise ReloadRejected(f"reload rejected, the previous table keeps serving: {exc.message}") from None
        self.routing, self._routing_stamp = table, stamp
        log.info("routing table reloaded from %s: %d features", self.settings.routing, len(table.features))
        return table

    async def reload_profile(self) -> list[int]:
        """Swap in the runners of tiers whose placement changed in the profile file (a promoted model).

        Only tiers present in both the old and the new profile are swapped; adding or removing a tier
        needs a restart. A bad file or a runner that does not start is rejected, and the old runners serve.
        """
        self._profile_stamp = _file_stamp(self.profile_path)
        try:
            _, profile = load_profile(self.profile_path)
            if set(profile.tiers) != set(self.profile.tiers):
                raise ConfigError(f"{self.profile_path}: tiers were added or removed; restart the server for that")
            changed = [t for t in profile.tiers if profile.tiers[t] != self.profile.tiers[t]]
            fresh = {t: build_runner(t, profile.tiers[t], str(self.profile_path), profile.devices) for t in changed}
            for tier, runner in fresh.items():
                old = await self.supervisor.replace(tier, runner)
                log.info("tier %s now serves %s (was %s)", tier, runner.model_name, old.model_name if old else "none")
                if old is not None:
                    self._retire(old)
        except ConfigError as exc:
            log.error("profile reload rejected, the previous runners keep serving: %s", exc.message)
            raise ReloadRejected(f"profile reload rejected, the previous runners keep serving: {exc.message}") from None
        self.profile = profile
        return changed

    def _retire(self, runner: Runner, grace_s: float = 30.0) -> None:
        """Stop a replaced runner once requests that started on it have had `grace_s` to finish."""
        async def later() -> None:
            await asyncio.sleep(grace_s)
            await runner.stop()

        task = asyncio.create_task(later())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _watch_files(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_interval_s)
            try:
                if _stamp(self.settings) != self._routing_stamp:
                    self.reload_routing()
                if _file_stamp(self.profile_path) != self._profile_stamp:
                    await self.reload_profile()
            except ReloadRejected:
                pass  # already logged; the old configuration keeps serving

    # -- requests ----------------------------------------------------------------------------
    def dispatch(self, request: ChatCompletionRequest, header_feature: str | None) -> Dispatch:
        route = resolve_route(self.routing, request.model, header_feature)
        runner, downgraded = pick_runner(route, self.runners, self.profile_name)
        return Dispatch(route=route, runner=runner, downgraded=downgraded)

    async def complete(self, dispatch: Dispatch, request: ChatCompletionRequest) -> Outcome:
        """Answer on the dispatched tier; if that tier turns out to be down, only an allowed fallback may answer."""
        try:
            return await self._answer(dispatch, request)
        except TierUnavailable:
            fallback = self._fallback_after_failure(dispatch)
            if fallback is None:
                raise
            log.warning("tier %s unavailable for %s; serving from fallback tier %s", dispatch.runner.tier,
                        dispatch.route.label, fallback.runner.tier)
            return await self._answer(fallback, request)

    def _fallback_after_failure(self, dispatch: Dispatch) -> Dispatch | None:
        allowed = dispatch.route.spec.fallback if dispatch.route.spec else []
        for tier in allowed:
            runner = self.runners.get(tier)
            if runner is not None and runner is not dispatch.runner and runner.status().state == "ready":
                return Dispatch(route=dispatch.route, runner=runner, downgraded=tier > dispatch.route.tier)
        return None

    async def _answer(self, dispatch: Dispatch, request: ChatCompletionRequest) -> Outcome:
        if dispatch.gated:
            outcome = await answer_gated(dispatch.route, dispatch.runner, request, self.runners, self.profile_name)
        else:
            started = time.perf_counter()
            completion = await dispatch.runner.complete(request)
            attempt = Attempt(dispatch.runner.tier, dispatch.runner.model_name, "primary", usage=completion.usage,
                              latency_ms=(time.perf_counter() - started) * 1000)
            outcome = Outcome(completion=completion, runner=dispatch.runner, attempts=[attempt])
        outcome.downgraded = dispatch.downgraded
        return outcome

    def stream(self, dispatch: Dispatch, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Ungated requests only: gated ones are buffered through `complete` so the gate sees the whole answer."""
        return dispatch.runner.stream(request)

    def price(self, tier: int) -> Price:
        return self.profile.tiers[tier].price

    # -- introspection -----------------------------------------------------------------------
    def models(self) -> ModelList:
        return ModelList(
            data=[Model(id=name, created=self.started_at, owned_by="tier-runner") for name in self.routing.routable_names()]
        )

    def readiness(self) -> tuple[bool, dict]:
        tiers: dict[str, dict] = {}
        for tier in (1, 2, 3):
            runner = self.runners.get(tier)
            if runner is None:
                tiers[str(tier)] = {"state": "not_configured", "detail": f"profile {self.profile_name!r} has no tiers.{tier}"}
            else:
                tiers[str(tier)] = {**runner.status().model_dump(), "optional": runner.placement.optional}
        ready = self.supervisor.ready()
        return ready, {"status": "ready" if ready else "not_ready", "profile": str(self.profile_path), "tiers": tiers}


def _stamp(settings: Settings) -> tuple[int, int] | None:
    return _file_stamp(settings.routing)


def _file_stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
