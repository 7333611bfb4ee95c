"""The routing table: each feature declares what a wrong answer costs, and that picks its tier."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from hardware.config import load_yaml_model
from runners.errors import InvalidRequest
from tiers.errors import NotFound
from hardware.profile import TierNumber
from tiers.cache.semantic import CachePolicy
from tiers.gates import Gate, GateSpec
from tiers.ledger.rows import spec_hash
from tiers.request_defaults import RequestDefaults
from tiers.shadow_compare import Shadow

DEFAULT_ROUTING = Path(__file__).with_name("routing.yaml")
FEATURE_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    usd: float = Field(gt=0, description="spend allowed per period")
    period: Literal["day", "week", "month"] = "month"
    action: Literal["alert", "block", "allow"] = Field(
        default="alert", description="alert: log and flag; block: 429 until the period ends; allow: only flag"
    )


class StoreText(BaseModel):
    model_config = ConfigDict(extra="forbid")
    retention_days: float = Field(gt=0, le=365, description="stored prompts and answers are erased after this")


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tier: TierNumber = Field(description="1 frontier, 2 mid-size, 3 small; follows from the failure cost")
    value: Literal["revenue", "retention", "risk", "internal"] = Field(description="what success unlocks")
    owner: str = Field(min_length=1, description="team that owns both the cost and the failure rate")
    failure_cost_usd: float = Field(ge=0, description="what one wrong answer costs the business")
    description: str = ""
    request: RequestDefaults | None = Field(
        default=None, description="instructions and output contract sent with every request: system, max_tokens, ...")
    gate: GateSpec | None = Field(default=None, description="quality checks every answer must pass")
    retries: int = Field(default=0, ge=0, le=3, description="same-tier retries after a gate failure")
    escalate_to: TierNumber | None = Field(
        default=None, description="stronger tier for answers that fail the gate (default: tier 1)"
    )
    budget: Budget | None = Field(default=None, description="spend per period, and what happens past it")
    store_text: StoreText | None = Field(default=None, description="opt in to keep prompts and answers for evals")
    cache: CachePolicy | None = Field(default=None, description="semantic cache for repeated questions")
    shadow: Shadow | None = Field(default=None, description="re-ask a sample of answers of another tier and compare")
    _gates: list[Gate] = PrivateAttr(default_factory=list)
    _spec_hash: str = PrivateAttr(default="")
    _gate_hash: str | None = PrivateAttr(default=None)
    fallback: list[TierNumber] = Field(
        default_factory=list, description="other tiers allowed, in order, while this feature's tier is down"
    )

    @model_validator(mode="after")
    def _cascade_is_coherent(self) -> Feature:
        if self.escalate_to is not None:
            if self.gate is None:
                raise ValueError("escalate_to needs a gate: escalation happens when an answer fails it")
            if self.escalate_to >= self.tier:
                raise ValueError(f"escalate_to must be a stronger tier (a number below {self.tier})")
        if self.tier in self.fallback:
            raise ValueError("fallback lists other tiers; the feature's own tier is always tried first")
        if self.shadow is not None and self.shadow.tier == self.tier:
            raise ValueError("shadow.tier must be another tier than the feature's: it answers again to compare")
        self._gates = self.gate.build() if self.gate else []
        self._spec_hash = spec_hash(self)
        self._gate_hash = spec_hash([[g.name, g.args] for g in self._gates]) if self._gates else None
        return self

    def gates(self) -> list[Gate]:
        return self._gates

    @property
    def spec_hash(self) -> str:
        """Short hash of this feature's whole spec: a ledger row says which instructions and gates were in force."""
        return self._spec_hash

    @property
    def gate_hash(self) -> str | None:
        """Short hash of the gates' names and arguments, so a failure rate ties to the exact gate settings."""
        return self._gate_hash

    def escalation_tier(self) -> int | None:
        if self.gate is None or self.tier == 1:
            return self.escalate_to
        return self.escalate_to or 1


class RoutingTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: dict[str, Feature] = Field(min_length=1)
    failure_targets: dict[TierNumber, float] = Field(
        default_factory=lambda: {1: 0.02, 2: 0.05, 3: 0.15},
        description="highest acceptable failure rate per tier; the audit and promotion compare against it",
    )
    default_feature: str | None = Field(
        default=None, description="feature for requests that name no known feature; unset means 404"
    )

    @model_validator(mode="after")
    def _names_and_default(self) -> RoutingTable:
        for name in self.features:
            if not re.match(FEATURE_NAME, name):
                raise ValueError(f"feature name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
        if self.default_feature is not None and self.default_feature not in self.features:
            raise ValueError(f"default_feature {self.default_feature!r} is not one of the features")
        return self

    def routable_names(self) -> list[str]:
        return [f"feature:{name}" for name in self.features] + [f"tier:{n}" for n in (1, 2, 3)]


@dataclass(frozen=True)
class Route:
    """Where one request goes. `feature` is None for direct `tier:<n>` use."""

    tier: int
    feature: str | None
    spec: Feature | None

    @property
    def label(self) -> str:
        return f"feature:{self.feature}" if self.feature else f"tier:{self.tier}"


def resolve_route(table: RoutingTable, model: str, header_feature: str | None) -> Route:
    """`model` may be `feature:<name>` or `tier:<n>`; otherwise the X-Feature header, then the default.

    A feature that is named (in `model` or the header) and not in the table is a 404 listing close
    names, never the default feature: a typo must not be served silently by another feature's tier.
    The default serves only requests that name no feature at all.
    """
    if model.startswith("tier:"):
        number = model.removeprefix("tier:")
        if number not in ("1", "2", "3"):
            raise NotFound(f"model {model!r} does not exist; use tier:1, tier:2 or tier:3", param="model")
        return Route(tier=int(number), feature=None, spec=None)
    if model.startswith("feature:"):
        name = model.removeprefix("feature:")
        if header_feature and header_feature != name:
            raise InvalidRequest(
                f"model names feature {name!r} but the X-Feature header names {header_feature!r}; send one of them",
                param="model",
            )
    else:
        name = header_feature or ""
    if name in table.features:
        return Route(tier=table.features[name].tier, feature=name, spec=table.features[name])
    if not name and table.default_feature is not None:
        default = table.default_feature
        return Route(tier=table.features[default].tier, feature=default, spec=table.features[default])
    close = difflib.get_close_matches(name, list(table.features), n=3, cutoff=0.6) if name else []
    hint = f"did you mean {', '.join(f'feature:{c}' for c in close)}? " if close else ""
    shown = name or model
    raise NotFound(
        f"feature {shown!r} is not in the routing table; {hint}GET /v1/models lists the names, or add it to the table",
        param="model",
    )


def load_routing(path: Path = DEFAULT_ROUTING) -> RoutingTable:
    return load_yaml_model(path, RoutingTable)
