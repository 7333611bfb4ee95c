"""Where a request goes: its route, the runner that answers it, and the fallback when that tier is down.

The choice is made in one place (`choose`): the route's own tier if it is serving, else the first
serving tier in the feature's `fallback` list, marked as a downgrade when it is cheaper. It is made
at the start of a request and once more if the chosen tier turns out to be unavailable before the
first byte; never anywhere else, so there is no silent downgrade.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from runners.answer import Delta
from runners.base import Runner
from runners.errors import RunnerFailed, TierUnavailable
from runners.request import Request
from tiers import policy
from tiers.policy import Outcome
from tiers.routing import Route, resolve_route
from tiers.tier_runners import TierRunners

log = logging.getLogger("tier_runner.dispatch")


@dataclass(frozen=True)
class Dispatch:
    """Decided once at a request's start: a reload mid-request does not change it."""

    route: Route
    runner: Runner
    downgraded: bool


def choose(route: Route, runners: TierRunners, *, excluding: Runner | None = None) -> tuple[Runner, bool]:
    """The route's own tier if it is serving; else the first serving tier in the feature's fallback list."""
    own = runners.get(route.tier)
    if own is not None and own is not excluding and own.serving():
        return own, False
    for tier in route.spec.fallback if route.spec else []:
        runner = runners.get(tier)
        if runner is not None and runner is not excluding and runner.serving():
            return runner, tier > route.tier
    if own is None:
        raise TierUnavailable(
            f"tier {route.tier} is not served by profile {runners.name!r}; add a `tiers.{route.tier}` entry "
            f"(runner, device, model) to the profile, or list another tier under this feature's `fallback`")
    status = own.status()
    detail = f": {status.detail}" if status.detail else ""
    raise TierUnavailable(f"tier {route.tier} ({status.model}) is {status.state.replace('_', ' ')}{detail}; no fallback "
                          f"is allowed for {route.label}, so it is not served by a cheaper tier")


def dispatch(routing, runners: TierRunners, model: str, header_feature: str | None) -> Dispatch:
    route = resolve_route(routing, model, header_feature)
    runner, downgraded = choose(route, runners)
    return Dispatch(route=route, runner=runner, downgraded=downgraded)


def _fallback(failed: Dispatch, runners: TierRunners, why: TierUnavailable) -> Dispatch:
    """After the dispatched tier failed as unavailable: a declared fallback, or the original error."""
    if not (failed.route.spec and failed.route.spec.fallback):
        raise why
    try:
        runner, _ = choose(failed.route, runners, excluding=failed.runner)
    except TierUnavailable:
        raise why from None
    log.warning("tier %s unavailable for %s; serving from fallback tier %s", failed.runner.tier, failed.route.label,
                runner.tier)
    return Dispatch(route=failed.route, runner=runner, downgraded=runner.tier > failed.route.tier)


async def complete(d: Dispatch, request: Request, runners: TierRunners) -> Outcome:
    """Answer on the dispatched tier; if that tier turns out to be down, only an allowed fallback may answer."""
    try:
        return await policy.answer(d, request, runners)
    except TierUnavailable as exc:
        return await policy.answer(_fallback(d, runners, exc), request, runners)


async def stream(d: Dispatch, request: Request, runners: TierRunners) -> tuple[Dispatch, Delta, AsyncIterator[Delta]]:
    """An ungated stream, its first delta already read (request errors surface before any byte is sent), and
    the dispatch that is really answering: a fallback tier if the dispatched one was down."""
    try:
        return await _first(d, request)
    except TierUnavailable as exc:
        return await _first(_fallback(d, runners, exc), request)


async def _first(d: Dispatch, request: Request) -> tuple[Dispatch, Delta, AsyncIterator[Delta]]:
    deltas = d.runner.stream(request)
    try:
        first = await anext(deltas)
    except StopAsyncIteration:
        raise RunnerFailed(f"{d.runner.where} ended its stream before the first event; retry the request") from None
    except BaseException:
        await deltas.aclose()
        raise
    return d, first, deltas
