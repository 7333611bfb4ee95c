"""What this machine has: CPU model and flags, cores, RAM, and NVIDIA GPUs with their memory.

GPUs are found with `nvidia-smi` (or NVML through pynvml when that is installed); a machine with
neither has none. Nothing here imports torch or vLLM.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

INTERESTING_FLAGS = ("avx", "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "fma", "f16c",
                     "neon", "asimd", "sve")
GiB = 1 << 30


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_total: int  # bytes
    memory_free: int


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    cpu_flags: tuple[str, ...]
    cores: int  # usable by this process (affinity), not the machine's total
    ram_total: int  # bytes
    ram_available: int
    gpus: tuple[Gpu, ...] = field(default_factory=tuple)
    gpu_probe: str = ""  # how GPUs were looked for, or why none were found

    def gpu(self, index: int) -> Gpu | None:
        return next((g for g in self.gpus if g.index == index), None)


def detect() -> Machine:
    model, flags = _cpu()
    total, available = _memory()
    gpus, probe = _gpus()
    return Machine(model, flags, len(os.sched_getaffinity(0)), total, available, tuple(gpus), probe)


def _cpu(path: Path = Path("/proc/cpuinfo")) -> tuple[str, tuple[str, ...]]:
    model, flags = "unknown CPU", set()
    try:
        text = path.read_text()
    except OSError:
        return model, ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "cpu model") and model == "unknown CPU":
            model = value.strip()
        elif key in ("flags", "Features"):
            flags.update(value.split())
    return model, tuple(sorted(f for f in flags if f in INTERESTING_FLAGS))


def _memory(path: Path = Path("/proc/meminfo")) -> tuple[int, int]:
    values: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[key] = int(parts[0]) * 1024
    except OSError:
        pass
    total = values.get("MemTotal", 0)
    limit = _cgroup_memory_limit()
    if limit and limit < total:
        total = limit
    return total, min(values.get("MemAvailable", total), total)


def _cgroup_memory_limit() -> int | None:
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def parse_nvidia_smi(csv: str) -> list[Gpu]:
    """Lines of `nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits` (MiB)."""
    gpus = []
    for line in csv.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            gpus.append(Gpu(int(parts[0]), parts[1], int(float(parts[2])) << 20, int(float(parts[3])) << 20))
    return gpus


def _gpus() -> tuple[list[Gpu], str]:
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=index,name,memory.total,memory.free",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15)
            if out.returncode == 0:
                return parse_nvidia_smi(out.stdout), "nvidia-smi"
            return [], f"nvidia-smi failed: {out.stderr.strip()[:120]}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return [], f"nvidia-smi failed: {exc}"
    try:
        import pynvml  # optional: nvidia-ml-py
    except ImportError:
        return [], "no nvidia-smi and no pynvml: no NVIDIA GPU visible"
    try:
        pynvml.nvmlInit()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(Gpu(i, name.decode() if isinstance(name, bytes) else name, mem.total, mem.free))
        return gpus, "NVML"
    except Exception as exc:  # NVML raises its own error types when no driver is loaded
        return [], f"NVML: {exc}"


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"
