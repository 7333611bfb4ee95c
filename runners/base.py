"""The one interface every backend implements, its lifecycle, and the registry that finds backends by name.

A runner's lifecycle is one state machine (`Lifecycle`): the runner moves itself through it as it
starts, stops or notices a failure, and the supervisor may only mark it failed. `status()` reports
and never changes anything: it is the lifecycle state, overlaid with what the runner knows about its
backend right now (a hosted API's open circuit shows as `failed` without being a reason to restart).
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from hardware.config import validate_model
from hardware.errors import ConfigError
from hardware.fit import Need
from hardware.profile import Device, TierPlacement
from runners.answer import Answer, Delta
from runners.capabilities import Capabilities, refuse_unsupported
from runners.request import Request

# not_configured: a setup the operator has not made (a hosted API's key is not exported). It is not retried,
# and a tier whose placement says `optional: true` in that state does not hold /ready back.
State = Literal["starting", "ready", "failed", "not_configured", "stopped"]

TRANSITIONS: dict[State, set[State]] = {
    "stopped": {"stopped", "starting", "ready", "failed", "not_configured"},
    "starting": {"ready", "failed", "stopped", "not_configured"},
    "ready": {"failed", "stopped"},
    "failed": {"stopped", "starting", "failed"},
    "not_configured": {"stopped", "starting", "failed"},
}


class RunnerStatus(BaseModel):
    state: State
    model: str
    runner: str
    detail: str = ""


class Lifecycle:
    """Where a runner is in its life; every change goes through `to`, which refuses impossible moves."""

    def __init__(self) -> None:
        self.state: State = "stopped"
        self.detail = ""
        self.since = time.monotonic()  # when it entered this state (a pool re-admits a replica ready since its ejection)

    def to(self, state: State, detail: str = "") -> None:
        if state not in TRANSITIONS[self.state]:
            raise RuntimeError(f"runner lifecycle: {self.state} -> {state} is not a transition")
        if state != self.state:
            self.since = time.monotonic()
        self.state, self.detail = state, detail


class Runner(ABC):
    """A backend serving one tier. Subclasses declare `kind`, `Options` and `capabilities`, and implement
    `answer` (whole) and `answer_stream` (deltas); `complete`/`stream` check the request against the
    capabilities first, so what the backend cannot do is a 400 before anything is sent."""

    kind: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    capabilities: ClassVar[Capabilities] = Capabilities()
    may_be_optional: ClassVar[bool] = False  # can it be `not_configured`, so that `optional: true` means something?

    def __init__(self, tier: int, placement: TierPlacement, options: Any, device: Device | None = None):
        self.tier = tier
        self.placement = placement
        self.options = options
        self.device = device
        self.lifecycle = Lifecycle()
        self.in_flight = 0  # requests being answered now: a retired runner drains to zero before it stops
        self.replica = ""  # a pool's member (runners/pool.py): its name, on /ready, in metrics and the ledger

    @classmethod
    def variant(cls, options: Any) -> type[Runner]:
        """The class that serves these options (a hosted runner picks its provider's); default: this one."""
        return cls

    @property
    def model_name(self) -> str:
        return self.placement.model

    @property
    def where(self) -> str:
        """How messages name this tier, e.g. "tier 3 (smollm2 on llamacpp)"."""
        return f"tier {self.tier} ({self.model_name} on {self.kind})"

    def status(self) -> RunnerStatus:
        return RunnerStatus(state=self.lifecycle.state, model=self.model_name, runner=self.kind,
                            detail=self.lifecycle.detail)

    def serving(self) -> bool:
        """May a request be sent now?"""
        return self.status().state == "ready"

    def mark_failed(self, detail: str) -> None:
        """The supervisor's one way in: a start or restart attempt that raised."""
        self.lifecycle.to("failed", detail)

    @abstractmethod
    async def start(self) -> None:
        """Load or connect; raise ConfigError for a setup the operator must fix."""

    @abstractmethod
    async def stop(self) -> None:
        """Release the backend; in-flight requests end with an error."""

    @property
    def startup_timeout_s(self) -> float:
        """How long a live swap waits for this runner to get ready before it keeps the old one."""
        return 300.0

    def memory_need(self) -> Need | None:
        """What this tier takes on its device, for the fit check before start; None: nothing local."""
        return None

    def memory_needs(self) -> list[Need]:
        """Every device's share (a server over several GPUs has one per GPU), named for this replica."""
        need = self.memory_need()
        return [] if need is None else [dataclasses.replace(need, replica=self.replica)]

    def supervised(self) -> list[Runner]:
        """What the supervisor health-checks and restarts one by one: this runner, or a pool's replicas."""
        return [self]

    async def check(self) -> None:
        """Probe the backend and move the lifecycle if it broke (the supervisor calls it periodically)."""

    async def complete(self, request: Request) -> Answer:
        refuse_unsupported(request, self.capabilities, self.where)
        self.in_flight += 1
        try:
            return await self.answer(request)
        finally:
            self.in_flight -= 1

    def stream(self, request: Request) -> AsyncIterator[Delta]:
        refuse_unsupported(request, self.capabilities, self.where)
        return self._counted(self.answer_stream(request))

    async def _counted(self, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
        self.in_flight += 1
        try:
            async for delta in deltas:
                yield delta
        finally:
            self.in_flight -= 1
            await deltas.aclose()

    async def count_tokens(self, request: Request) -> int | None:
        """The prompt's length in the backend's own tokens (chat template and tools included); None where the
        backend has no tokenizer to ask, and the caller estimates."""
        return None

    @abstractmethod
    async def answer(self, request: Request) -> Answer:
        """Answer one non-streaming request."""

    @abstractmethod
    def answer_stream(self, request: Request) -> AsyncIterator[Delta]:
        """Answer one streaming request; request errors raise before the first delta."""


RUNNERS: dict[str, type[Runner]] = {}


def register_runner(cls: type[Runner]) -> type[Runner]:
    RUNNERS[cls.kind] = cls
    return cls


def build_runner(tier: int, placement: TierPlacement, source: str, devices: dict[str, Device] | None = None, *,
                 key: str | None = None) -> Runner:
    """Validate the placement's options against the runner's own Options model, then construct it; `key` names
    the placement in errors (default `tiers.<n>`; a pool's replica: `tiers.<n>.replicas.<i>`)."""
    import runners.builtin  # noqa: F401  (registers the built-in runners)

    key = key or f"tiers.{tier}"
    cls = RUNNERS.get(placement.runner)
    if cls is None:
        known = ", ".join(sorted(RUNNERS))
        raise ConfigError(f"{source}: tiers.{tier}.runner: unknown runner {placement.runner!r}; use one of: {known}")
    if placement.optional and not cls.may_be_optional:
        raise ConfigError(f"{source}: tiers.{tier}.optional: a {placement.runner} tier is always configured, so it cannot "
                          "be optional; remove `optional` (only a hosted tier, whose key may be missing, can be)")
    options = validate_model(placement.options, cls.Options, source=f"{source}: {key}")
    device = (devices or {}).get(placement.device) if placement.device else None
    return cls.variant(options)(tier, placement, options, device)
