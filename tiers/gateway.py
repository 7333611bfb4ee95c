"""The serving layer: turns a typed request into a route, a runner call and an answer. No HTTP here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from hardware.errors import TierUnavailable
from hardware.profile import load_profile
from runners.base import Runner, build_runner
from runners.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, Model, ModelList, now
from tiers.routing import Route, RoutingTable, load_routing, resolve_route
from tiers.settings import Settings

log = logging.getLogger("tier_runner.gateway")


@dataclass(frozen=True)
class Dispatch:
    """Where a request went: the HTTP layer turns this into x-tier / x-model / x-feature headers."""

    route: Route
    runner: Runner


class Gateway:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.routing: RoutingTable = load_routing(settings.routing)
        self.profile_path, self.profile = load_profile(settings.profile)
        source = str(self.profile_path)
        self.runners: dict[int, Runner] = {
            tier: build_runner(tier, placement, source) for tier, placement in self.profile.tiers.items()
        }
        self.started_at = now()

    async def start(self) -> None:
        """Start every runner of the profile concurrently; any failure stops the ones that started."""
        results = await asyncio.gather(*(r.start() for r in self.runners.values()), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            raise errors[0]
        for tier, runner in sorted(self.runners.items()):
            log.info("tier %s ready: %s on %s", tier, runner.model_name, runner.kind)

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.runners.values()), return_exceptions=True)

    # -- requests ----------------------------------------------------------------------------
    def dispatch(self, request: ChatCompletionRequest, header_feature: str | None) -> Dispatch:
        route = resolve_route(self.routing, request.model, header_feature)
        runner = self.runners.get(route.tier)
        if runner is None:
            raise TierUnavailable(
                f"tier {route.tier} is not served by profile {self.profile_path.stem!r} ({self.profile_path}); "
                f"add a `tiers.{route.tier}` entry (runner, device, model) to that file or choose another profile"
            )
        return Dispatch(route=route, runner=runner)

    async def complete(self, dispatch: Dispatch, request: ChatCompletionRequest) -> ChatCompletion:
        return await dispatch.runner.complete(request)

    def stream(self, dispatch: Dispatch, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        return dispatch.runner.stream(request)

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
                tiers[str(tier)] = {"state": "not_configured", "detail": f"profile {self.profile_path.stem!r} has no tiers.{tier}"}
            else:
                tiers[str(tier)] = runner.status().model_dump()
        ready = all(r.status().state == "ready" for r in self.runners.values())
        return ready, {"status": "ready" if ready else "not_ready", "profile": str(self.profile_path), "tiers": tiers}

