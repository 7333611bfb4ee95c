"""The one interface every backend implements, and the registry that finds them by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, ClassVar, Literal

from pydantic import BaseModel

from hardware.config import validate_model
from hardware.errors import ConfigError
from runners.errors import InvalidRequest
from hardware.fit import Need
from hardware.profile import Device, TierPlacement
from runners.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest

# not_configured: a setup the operator has not made (a hosted API's key is not exported). It is not retried,
# and a tier whose placement says `optional: true` in that state does not hold /ready back.
State = Literal["starting", "ready", "failed", "not_configured", "stopped"]


class RunnerStatus(BaseModel):
    state: State
    model: str
    runner: str
    detail: str = ""


class Runner(ABC):
    """A backend serving one tier. Subclasses declare `kind` and an `Options` model."""

    kind: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    may_be_optional: ClassVar[bool] = False  # can it be `not_configured`, so that `optional: true` means something?

    def __init__(self, tier: int, placement: TierPlacement, options: Any, device: Device | None = None):
        self.tier = tier
        self.placement = placement
        self.options = options
        self.device = device
        self._state: State = "stopped"
        self._detail = ""

    @property
    def model_name(self) -> str:
        return self.placement.model

    def status(self) -> RunnerStatus:
        return RunnerStatus(state=self._state, model=self.model_name, runner=self.kind, detail=self._detail)

    @property
    def state(self) -> State:
        """The runner's own lifecycle state; status() may report more (a hosted tier's open circuit breaker
        shows as failed there, but is not a reason to restart it)."""
        return self._state

    def _set_state(self, state: State, detail: str = "") -> None:
        self._state, self._detail = state, detail

    @abstractmethod
    async def start(self) -> None:
        """Load or connect; raise ConfigError for a setup the operator must fix."""

    @abstractmethod
    async def stop(self) -> None:
        """Release the backend; in-flight requests end with an error."""

    def memory_need(self) -> Need | None:
        """What this tier takes on its device, for the fit check before start; None: nothing local."""
        return None

    async def check(self) -> None:
        """Probe the backend and update the state (the supervisor calls it periodically); default: nothing."""

    @abstractmethod
    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion:
        """Answer one non-streaming request."""

    @abstractmethod
    def stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Answer one streaming request; request errors raise before the first chunk."""


RUNNERS: dict[str, type[Runner]] = {}


def register_runner(cls: type[Runner]) -> type[Runner]:
    RUNNERS[cls.kind] = cls
    return cls


def reject_guided(request: ChatCompletionRequest, where: str) -> None:
    """Runners without vLLM's guided decoding refuse its fields by name rather than ignore them."""
    fields = request.guided_fields()
    if fields:
        raise InvalidRequest(f"{fields[0]} is a vLLM extension that {where} does not support; use response_format "
                             "(json_schema) instead, which every tier honours", param=fields[0])


def build_runner(tier: int, placement: TierPlacement, source: str, devices: dict[str, Device] | None = None) -> Runner:
    """Validate the placement's options against the runner's own Options model, then construct it."""
    import runners.builtin  # noqa: F401  (registers the built-in runners)

    cls = RUNNERS.get(placement.runner)
    if cls is None:
        known = ", ".join(sorted(RUNNERS))
        raise ConfigError(f"{source}: tiers.{tier}.runner: unknown runner {placement.runner!r}; use one of: {known}")
    if placement.optional and not cls.may_be_optional:
        raise ConfigError(f"{source}: tiers.{tier}.optional: a {placement.runner} tier is always configured, so it cannot "
                          "be optional; remove `optional` (only a hosted tier, whose key may be missing, can be)")
    options = validate_model(placement.options, cls.Options, source=f"{source}: tiers.{tier}")
    device = (devices or {}).get(placement.device) if placement.device else None
    return cls(tier, placement, options, device)


