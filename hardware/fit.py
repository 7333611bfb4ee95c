"""The fit check: does each tier's model, with its KV cache, fit the device the profile puts it on?

Each runner states its need (`Runner.memory_need()`); this module adds the needs up per device and
compares them with what `detect()` found. A tier on a device that does not exist, or a sum that does
not fit, is a ConfigError that gives the numbers, before anything is started.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from hardware.detect import GiB, Machine, gib
from hardware.errors import ConfigError
from hardware.profile import Device


@dataclass(frozen=True)
class Need:
    """Memory one tier takes on its device (and, for a GPU tier, on the host)."""

    tier: int
    device_name: str
    device: Device
    weights: int
    kv_cache: int
    overhead: int  # runtime: the engine's own processes, activations
    note: str = ""
    gpu_fraction: float | None = None  # a GPU tier: share of the GPU the engine claims up front (vLLM)
    replica: str = ""  # a pool's member: its name

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def label(self) -> str:
        return f"{self.tier} (replica {self.replica})" if self.replica else str(self.tier)


@dataclass(frozen=True)
class Placement:
    device_name: str
    where: str  # "cpu (RAM)" or "cuda:0 NVIDIA H100 (VRAM)"
    need: int
    capacity: int
    tiers: tuple[int, ...]

    @property
    def fits(self) -> bool:
        return self.need <= self.capacity


def check_devices(used: dict[str, tuple[str, Device]], machine: Machine, source: str = "profile") -> None:
    """Every cuda device a tier (or a pool's replica: "tier 2 (replica b)") is mapped to exists here; checked
    first, before any model is looked at."""
    problems = []
    for who, (name, device) in sorted(used.items()):
        if device.kind == "cuda" and machine.gpu(device.index or 0) is None:
            seen = ", ".join(f"cuda:{g.index} {g.name}" for g in machine.gpus) or f"none ({machine.gpu_probe})"
            problems.append(f"{who} runs on device {name!r} (cuda index {device.index}), which this machine "
                            f"does not have; GPUs found: {seen}. Use a profile for this machine (e.g. workstation) "
                            f"or map the tier to an existing device")
    if problems:
        raise ConfigError(f"{source}: does not fit this machine: " + " | ".join(problems))


def check_fit(needs: list[Need], machine: Machine, source: str = "profile") -> list[Placement]:
    """Raise ConfigError naming every problem with its numbers; return each device's sums when all fit.

    Needs are summed per GPU index, whatever the devices are called: two replicas, or one replica's tensor-parallel
    shards, on the same GPU share it."""
    problems: list[str] = []
    placements: list[Placement] = []
    host_need = sum(n.total for n in needs if n.device.kind == "cpu")
    host_tiers = [n.tier for n in needs if n.device.kind == "cpu"]
    by_gpu: dict[int, list[Need]] = {}
    for need in needs:
        if need.device.kind == "cuda":
            by_gpu.setdefault(need.device.index or 0, []).append(need)
            host_need += need.overhead  # the engine's host-side processes
            host_tiers.append(need.tier)
    for _, gpu_needs in sorted(by_gpu.items()):
        device, name = gpu_needs[0].device, gpu_needs[0].device_name
        tiers = ", ".join(n.label for n in gpu_needs)
        gpu = machine.gpu(device.index or 0)
        if gpu is None:
            seen = ", ".join(f"cuda:{g.index} {g.name}" for g in machine.gpus) or f"none ({machine.gpu_probe})"
            problems.append(f"tiers {tiers} run on device {name!r} (cuda index {device.index}), which this machine does "
                            f"not have; GPUs found: {seen}. Use a profile for this machine (e.g. workstation) or map "
                            f"the tier to an existing device")
            continue
        need = sum(n.weights + n.kv_cache for n in gpu_needs)
        reserve = sum(int(n.gpu_fraction * gpu.memory_total) if n.gpu_fraction else n.weights + n.kv_cache
                      for n in gpu_needs)
        budget = min(reserve, gpu.memory_free)
        placements.append(Placement(name, f"cuda:{gpu.index} {gpu.name} (VRAM)", need, budget,
                                    tuple(n.tier for n in gpu_needs)))
        if reserve > gpu.memory_free:
            problems.append(f"tiers {tiers} on {name!r} reserve {gib(reserve)} of {gpu.name}, which has {gib(gpu.memory_free)} "
                            f"free of {gib(gpu.memory_total)}; lower gpu_memory_utilization or free the GPU")
        elif need > budget:
            problems.append(f"tiers {tiers} on {name!r} need {gib(need)} (weights + KV cache for one full-length "
                            f"sequence) but get {gib(budget)}; raise gpu_memory_utilization, lower max_model_len, or "
                            f"use a smaller model")
    if host_tiers:
        placements.insert(0, Placement("cpu", "cpu (RAM)", host_need, machine.ram_available, tuple(host_tiers)))
        if host_need > machine.ram_available:
            detail = "; ".join(f"tier {n.label}: weights {gib(n.weights)} + KV {gib(n.kv_cache)} + runtime "
                               f"{gib(n.overhead)}" for n in needs)
            problems.append(f"the tiers need {gib(host_need)} of RAM but {gib(machine.ram_available)} is available "
                            f"(of {gib(machine.ram_total)}): {detail}; use smaller models, a smaller n_ctx/max_batch or "
                            f"KV cache, or move a tier to a GPU")
    if problems:
        raise ConfigError(f"{source}: does not fit this machine: " + " | ".join(problems))
    return placements


# -- estimates --------------------------------------------------------------------------------------

def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    return 2 * layers * kv_heads * head_dim * dtype_bytes  # K and V


def hf_shape(folder: Path) -> tuple[int, int, int, int]:
    """(weights bytes, layers, kv heads, head dim) of a transformers folder, from its files and config.json."""
    config = json.loads((folder / "config.json").read_text())
    config = config.get("text_config", config)
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    weights = sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin", ".pt"))
    return weights, config["num_hidden_layers"], config.get("num_key_value_heads", heads), head_dim


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: Path, wanted: set[str] | None = None) -> dict[str, object]:
    """Scalar key/values of a GGUF header (arrays are skipped), read without llama.cpp."""
    out: dict[str, object] = {}
    with Path(path).open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ConfigError(f"{path} is not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ConfigError(f"{path}: GGUF version {version} is too old to read")

        def read(fmt: str):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def string() -> str:
            return f.read(read("<Q")).decode("utf-8", "replace")

        def value(kind: int):
            if kind in _SCALARS:
                return read(_SCALARS[kind])
            if kind == 8:
                return string()
            if kind == 9:
                item, n = read("<I"), read("<Q")
                if item in _SCALARS:
                    f.seek(struct.calcsize(_SCALARS[item]) * n, 1)
                else:
                    for _ in range(n):
                        value(item)
                return None
            raise ConfigError(f"{path}: unknown GGUF value type {kind}")

        for _ in range(count):
            key = string()
            v = value(read("<I"))
            if v is not None and (wanted is None or key in wanted):
                out[key] = v
    return out


def gguf_shape(path: Path) -> tuple[int, int, int, int]:
    """(file bytes, layers, kv heads, head dim) of a GGUF model."""
    meta = gguf_metadata(path)
    arch = meta.get("general.architecture", "llama")
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or int(meta[f"{arch}.embedding_length"]) // heads)
    return Path(path).stat().st_size, int(meta[f"{arch}.block_count"]), kv_heads, head_dim


VLLM_HOST_OVERHEAD = 3 * GiB  # torch + vLLM API server + engine core, measured ~3.1 GiB with SmolLM2 on CPU
LLAMA_OVERHEAD = 256 << 20  # llama.cpp compute buffers for a small model
