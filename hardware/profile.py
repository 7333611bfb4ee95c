"""Hardware profiles: which devices exist and which runner serves each tier on which of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hardware.config import load_yaml_model

PROFILES_DIR = Path(__file__).with_name("profiles")
TierNumber = Literal[1, 2, 3]


class Device(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["cpu", "cuda"] = Field(description="cpu, or cuda for an NVIDIA GPU")
    index: int | None = Field(default=None, ge=0, description="GPU index (cuda only)")

    @model_validator(mode="after")
    def _index_only_for_gpus(self) -> Device:
        if self.kind == "cuda" and self.index is None:
            raise ValueError("a cuda device needs `index` (0 for the first GPU)")
        if self.kind == "cpu" and self.index is not None:
            raise ValueError("`index` is only for cuda devices; remove it")
        return self


class Price(BaseModel):
    """What a tier costs: hosted APIs per token; local tiers per token or per hour of hardware."""

    model_config = ConfigDict(extra="forbid")
    input_per_m: float = Field(default=0.0, ge=0, description="USD per million prompt tokens")
    output_per_m: float = Field(default=0.0, ge=0, description="USD per million completion tokens")
    per_hour: float | None = Field(default=None, ge=0, description="USD per hour of the device, spread over throughput")
    throughput_tok_s: float | None = Field(
        default=None, gt=0, description="measured completion tokens/s of the tier (make bench) for per_hour pricing"
    )

    @model_validator(mode="after")
    def _hourly_needs_throughput(self) -> Price:
        if self.per_hour is not None and self.throughput_tok_s is None:
            raise ValueError("per_hour needs throughput_tok_s (the tier's measured completion tokens per second)")
        return self

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        cost = (prompt_tokens * self.input_per_m + completion_tokens * self.output_per_m) / 1e6
        if self.per_hour is not None and self.throughput_tok_s:
            cost += self.per_hour / 3600 * completion_tokens / self.throughput_tok_s
        return cost


class RestartPolicy(BaseModel):
    """How the supervisor brings a failed tier back: exponential backoff between tries."""

    model_config = ConfigDict(extra="forbid")
    backoff_s: float = Field(default=1.0, gt=0, le=3600, description="wait before the first restart")
    backoff_max_s: float = Field(default=60.0, gt=0, le=86400, description="longest wait; doubles up to this")
    check_interval_s: float = Field(default=2.0, gt=0, le=600, description="how often each tier is health-checked")


REPLICA_FIXED = {
    "runner": "a replica runs its tier's runner",
    "model": "a replica serves its tier's model (a different model is another tier, or a promotion)",
    "price": "a tier has one price, whichever replica answers",
    "optional": "`optional` belongs to the tier",
    "restart": "`restart` belongs to the tier and applies to each replica",
    "replicas": "replicas do not nest",
    "min_ready": "`min_ready` belongs to the tier",
    "ejection": "`ejection` belongs to the tier",
}


class Replica(BaseModel):
    """One member of a tier's pool: the tier's placement with these keys replaced (a url, a device, a base_url or
    key variable, a threads share); the runner validates the result like any placement."""

    model_config = ConfigDict(extra="allow")
    name: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9._-]{0,31}$",
                             description="its label on /ready, in metrics and in the ledger's replica column; "
                                         "default r1, r2, ...")
    weight: float = Field(default=1.0, gt=0, le=1000,
                          description="its share of traffic next to the others' (least outstanding requests, weighted)")
    device: str | None = Field(default=None, description="a key of `devices`; default the tier's")

    @model_validator(mode="after")
    def _only_placement_keys(self) -> Replica:
        for key in self.model_extra or {}:
            if key in REPLICA_FIXED:
                raise ValueError(f"{key}: {REPLICA_FIXED[key]}; remove it from the replica")
        return self


class Ejection(BaseModel):
    """When a pool stops sending to a replica that fails requests, before its health checks notice."""

    model_config = ConfigDict(extra="forbid")
    after_failures: int = Field(default=2, ge=1, le=100,
                                description="requests in a row that failed on a replica before their first byte")
    cooldown_s: float = Field(default=10.0, gt=0, le=3600,
                              description="then no requests for this long; the next one probes it")


class TierPlacement(BaseModel):
    """Runner, device and model for one tier; the runner validates its own remaining options."""

    model_config = ConfigDict(extra="allow")
    runner: str = Field(description="a registered runner: llamacpp, vllm or hosted")
    device: str | None = Field(default=None, description="a key of `devices`; hosted runners have none")
    model: str = Field(description="a catalog model name, or the provider's model id for hosted runners")
    price: Price = Field(default_factory=Price, description="used for the ledger's cost_usd")
    restart: RestartPolicy = Field(default_factory=RestartPolicy, description="restart backoff after a failure")
    optional: bool = Field(default=False, description="if the tier cannot start for lack of configuration (a hosted "
                                                      "API key not exported), /ready does not wait for it")
    replicas: list[Replica] = Field(default_factory=list, description=(
        "a pool: each entry is a runner of its own (its keys replace the tier's); requests go to the replica with "
        "the fewest in flight for its weight, and one that fails before its first byte is retried on another"))
    min_ready: int = Field(default=1, ge=1, description="a pool is ready while at least this many replicas are")
    ejection: Ejection = Field(default_factory=Ejection, description="a pool's passive ejection of failing replicas")

    @model_validator(mode="after")
    def _pool(self) -> TierPlacement:
        if self.replicas and self.min_ready > len(self.replicas):
            raise ValueError(f"min_ready is {self.min_ready} but the tier lists {len(self.replicas)} replicas; "
                             "lower min_ready or add replicas")
        if not self.replicas and self.min_ready != 1:
            raise ValueError("min_ready is for a pool: list `replicas`, or remove min_ready")
        names = [r.name for r in self.replicas if r.name]
        if len(names) != len(set(names)):
            raise ValueError("replica names must be unique; rename the duplicates")
        return self

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def replica_placements(self) -> list[tuple[str, float, TierPlacement]]:
        """Each replica's (name, weight, placement): the tier's placement with the replica's keys in place."""
        base = self.model_dump(exclude={"replicas", "min_ready", "ejection"})
        taken = {r.name for r in self.replicas if r.name}
        free = (f"r{i}" for i in range(1, 10_000) if f"r{i}" not in taken)
        out = []
        for replica in self.replicas:
            own = replica.model_dump(exclude={"name", "weight"}, exclude_unset=True)
            out.append((replica.name or next(free), replica.weight, TierPlacement.model_validate({**base, **own})))
        return out

    def devices_used(self) -> list[tuple[str, str]]:
        """(key, device name) of every device this tier's runners use, e.g. ("replicas.1.device", "gpu1")."""
        used = [("device", self.device)] if self.device else []
        return used + [(f"replicas.{i}.device", r.device) for i, r in enumerate(self.replicas) if r.device]


class EmbeddingPlacement(BaseModel):
    """The embedding model that answers one tier's POST /v1/embeddings; its backend validates the other options."""

    model_config = ConfigDict(extra="allow")
    runner: str = Field(description="minilm, llamacpp (a GGUF in embedding mode), vllm (a pooling model's server) "
                                    "or hosted (an OpenAI-compatible embeddings API)")
    model: str | None = Field(default=None, description="llamacpp: a catalog GGUF or a .gguf path; vllm and hosted: "
                                                        "the served model's id; minilm: none")
    price: Price = Field(default_factory=Price, description="input_per_m prices the embedded tokens")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str = ""
    devices: dict[str, Device] = Field(default_factory=dict)
    tiers: dict[TierNumber, TierPlacement] = Field(description="tier number (1, 2 or 3) -> placement")
    embeddings: dict[TierNumber, EmbeddingPlacement] = Field(
        default_factory=dict, description="tier number -> the embedding model serving /v1/embeddings for it")

    @model_validator(mode="after")
    def _devices_exist(self) -> Profile:
        known = ", ".join(sorted(self.devices)) or "none"
        for tier, placement in self.tiers.items():
            for key, device in placement.devices_used():
                if device not in self.devices:
                    raise ValueError(f"tiers.{tier}.{key} names {device!r}, which is not under `devices` "
                                     f"(defined: {known})")
        return self


def starts_vllm_on_cpu(profile: Profile) -> bool:
    """Whether a tier starts vLLM here on a CPU (`runner: vllm` without `url`, on a cpu device): it needs vLLM's
    CPU build and the converted model, which `make vllm-setup` makes; `make serve-tiers` asks this first."""
    for tier in profile.tiers.values():
        for placement in [p for _, _, p in tier.replica_placements()] if tier.replicas else [tier]:
            device = profile.devices.get(placement.device) if placement.device else None
            if placement.runner == "vllm" and not placement.options.get("url") and (device is None or
                                                                                     device.kind == "cpu"):
                return True
    return False


def profile_path(name_or_path: str | Path) -> Path:
    """A bare name means a shipped profile in hardware/profiles/."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.parent != Path("."):
        return candidate
    return PROFILES_DIR / f"{name_or_path}.yaml"


def load_profile(name_or_path: str | Path) -> tuple[Path, Profile]:
    path = profile_path(name_or_path)
    return path, load_yaml_model(path, Profile)
