"""What a vLLM tier starts: the model folder, the command line, the environment and the memory it needs.

Kept apart from `runners/vllm.py`, which runs and supervises the process and forwards requests to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hardware.detect import GiB
from hardware.errors import ConfigError
from hardware.fit import VLLM_HOST_OVERHEAD, Need, hf_shape, kv_bytes_per_token
from hardware.profile import Device

if TYPE_CHECKING:
    from runners.vllm import VllmRunner


class VllmOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, pattern=r"^https?://",
                            description="attach to a vLLM server already running at this /v1 root; nothing is started")
    python: str = Field(default=".venv-vllm/bin/python",
                        description="interpreter of the environment that has vLLM (relative to the working directory)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(default="auto", description="weights and compute dtype")
    enforce_eager: bool = Field(default=False, description="--enforce-eager; needed for bf16 on CPU (else nonsense)")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64,
                                      description="--tensor-parallel-size: GPUs each layer is split over")
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64,
                                        description="--pipeline-parallel-size: stages the layers are split into "
                                                    "(across nodes, usually one per node)")
    data_parallel_size: int = Field(default=1, ge=1, le=64,
                                    description="--data-parallel-size: copies of the model inside this one server, "
                                                "each on its own tensor x pipeline GPUs")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        default=None, description="--distributed-executor-backend: mp on one node (vLLM's default), ray for a Ray "
                                  "cluster (`ray start` on each node first); with data_parallel_size > 1 also "
                                  "--data-parallel-backend")
    nodes: int = Field(default=1, ge=1, le=64,
                       description="nodes of the Ray cluster this server spans; this node holds its share of the "
                                   "GPUs (tensor x pipeline x data / nodes, from `index` on) and the fit check places "
                                   "that share")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="share of each GPU's memory vLLM may take")
    max_model_len: int | None = Field(default=None, ge=64, description="context window; default: the model's own")
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096, description="sequences decoded together")
    cpu_kvcache_space_gib: int | None = Field(default=None, ge=1, le=1024,
                                              description="VLLM_CPU_KVCACHE_SPACE: KV cache size on CPU, in GiB")
    cpu_threads_bind: str = Field(default="nobind", pattern=r"^(nobind|auto|[0-9,|-]+)$", description=(
        "VLLM_CPU_OMP_THREADS_BIND on a CPU device: nobind (here the default) lets the kernel share the cores, so "
        "the new server of a live swap is not pinned to the cores the old one is busy on and starved; auto "
        "(vLLM's own default) pins each server to one NUMA node's cores, best when it has the node to itself; "
        "or core lists such as 0-15"))
    port: int | None = Field(default=None, ge=1, le=65535, description="port on 127.0.0.1; default a free one")
    tool_call_parser: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$", description=(
        "vLLM's parser for the model's tool-call syntax (hermes for Qwen2.5 and Hermes models, llama3_json, mistral, "
        "...): sets --enable-auto-tool-choice --tool-call-parser, which tool_choice auto needs; required and named "
        "calls work without it (vLLM constrains them with its own structured output)"))
    extra_args: list[str] = Field(default_factory=list, description="more vLLM server flags, passed as given")
    env: dict[str, str] = Field(default_factory=dict, description="more environment variables for the server")
    startup_timeout_s: float = Field(default=600, gt=0, description="longest wait for /health and /v1/models")
    stop_timeout_s: float = Field(default=15, gt=0, description="wait after SIGTERM before SIGKILL of the group")
    drain_timeout_s: float = Field(default=30, ge=0, description="wait for in-flight requests when stopping")
    health_failures: int = Field(default=3, ge=1, le=100, description="failed health probes in a row that mean failed")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0, description="longest wait for the next byte of an answer")
    max_connections: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _parallelism(self) -> VllmOptions:
        if self.nodes > 1 and self.distributed_executor_backend != "ray":
            raise ValueError(f"nodes: {self.nodes} nodes need distributed_executor_backend: ray (a Ray cluster across "
                             "them); set it, or nodes: 1")
        if self.gpus % self.nodes:
            raise ValueError(f"nodes: tensor x pipeline x data parallel = {self.gpus} GPUs do not split evenly over "
                             f"{self.nodes} nodes; make the product a multiple of nodes")
        if self.url and (self.gpus > 1 or self.distributed_executor_backend):
            raise ValueError("url: an attached server's parallelism is set where it was started; remove "
                             "tensor/pipeline/data_parallel_size, nodes and distributed_executor_backend, or url")
        return self

    @property
    def gpus(self) -> int:
        """GPUs of the whole server, every node together."""
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size

    @property
    def local_gpus(self) -> int:
        """GPUs of this node: from the device's `index` on."""
        return self.gpus // self.nodes


def model_source(tier: int, name: str) -> str:
    """A catalog name resolves to its local folder; a path is used as is; anything else is an HF id (offline)."""
    from hardware.catalog import load_catalog, resolve_model_file

    catalog = load_catalog()
    if name in catalog.models:
        entry = catalog.models[name]
        if entry.format != "hf":
            raise ConfigError(f"tiers.{tier}.model: {name} is a {entry.format} file; vLLM needs a transformers "
                              f"folder: convert it with `tier-runner models convert {name}` and use the converted entry")
        return str(resolve_model_file(name, catalog))
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith("."):
        if not (path / "config.json").is_file():
            raise ConfigError(f"tiers.{tier}.model: {path} is not a transformers folder (no config.json)")
        return str(path)
    return name  # an HF id: served only if it is already in the local HF cache (HF_HUB_OFFLINE=1)


def memory_needs(runner: VllmRunner, replica: str = "") -> list[Need]:
    """Weights, KV cache and vLLM's own processes, per device of this node; an attached server (url) is not ours
    to place. On GPUs: one need per local GPU, each with its shard (weights and one full-length sequence's KV
    cache split over tensor x pipeline; data parallel copies the model), vLLM's host processes counted once."""
    opts = runner.options
    if opts.url:
        return []
    device = runner.device or Device(kind="cpu")
    name = runner.placement.device or "cpu"
    folder = Path(model_source(runner.tier, runner.model_name))
    known = (folder / "config.json").is_file()
    if device.kind == "cpu" or not known:
        if not known:
            return [Need(runner.tier, name, device, 0, 0, VLLM_HOST_OVERHEAD, replica=replica,
                         note="an HF id: its size is unknown until vLLM loads it")]
        weights = hf_shape(folder)[0]
        kv = (opts.cpu_kvcache_space_gib or 4) * GiB  # vLLM's CPU default is 4 GiB
        return [Need(runner.tier, name, device, weights, kv, VLLM_HOST_OVERHEAD, replica=replica)]
    weights, layers, kv_heads, head_dim = hf_shape(folder)
    kv = kv_bytes_per_token(layers, kv_heads, head_dim) * (opts.max_model_len or _max_positions(folder))
    split = opts.tensor_parallel_size * opts.pipeline_parallel_size
    first = device.index or 0
    return [Need(runner.tier, name if g == 0 else f"{name}+{g}", Device(kind="cuda", index=first + g), weights // split,
                 kv // split, VLLM_HOST_OVERHEAD if g == 0 else 0, replica=replica,
                 gpu_fraction=opts.gpu_memory_utilization,
                 note="" if g == 0 else f"GPU {g + 1} of {opts.local_gpus} on this node")
            for g in range(opts.local_gpus)]


def python(runner: VllmRunner) -> str:
    python = Path(runner.options.python).expanduser()
    if not os.access(python, os.X_OK):
        raise ConfigError(f"tiers.{runner.tier}.python: {python} is not an executable; create the vLLM environment "
                          "with `make vllm-setup`, or point `python` at an interpreter that has vLLM")
    return str(python)


def command(runner: VllmRunner, model: str, port: int) -> list[str]:
    opts = runner.options
    cmd = [python(runner), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--served-model-name", runner.model_name, "--host", "127.0.0.1", "--port", str(port),
           "--dtype", opts.dtype, "--tensor-parallel-size", str(opts.tensor_parallel_size),
           "--disable-uvicorn-access-log"]
    if opts.pipeline_parallel_size > 1:
        cmd += ["--pipeline-parallel-size", str(opts.pipeline_parallel_size)]
    if opts.data_parallel_size > 1:
        cmd += ["--data-parallel-size", str(opts.data_parallel_size)]
    if opts.distributed_executor_backend:
        cmd += ["--distributed-executor-backend", opts.distributed_executor_backend]
        if opts.distributed_executor_backend == "ray" and opts.data_parallel_size > 1:
            cmd += ["--data-parallel-backend", "ray"]
    if runner.device is not None and runner.device.kind == "cuda":
        cmd += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization)]
    if opts.max_model_len:
        cmd += ["--max-model-len", str(opts.max_model_len)]
    if opts.max_num_seqs:
        cmd += ["--max-num-seqs", str(opts.max_num_seqs)]
    if opts.enforce_eager:
        cmd.append("--enforce-eager")
    if opts.tool_call_parser:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", opts.tool_call_parser]
    return cmd + list(opts.extra_args)


def environment(runner: VllmRunner) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}
    if runner.options.cpu_kvcache_space_gib:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(runner.options.cpu_kvcache_space_gib)
    if runner.device is None or runner.device.kind == "cpu":
        env["VLLM_CPU_OMP_THREADS_BIND"] = runner.options.cpu_threads_bind
    if runner.device is not None and runner.device.kind == "cuda":
        first = runner.device.index or 0
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(runner.options.local_gpus))
    return {**env, **runner.options.env}


def _max_positions(folder: Path) -> int:
    config = json.loads((folder / "config.json").read_text())
    return int(config.get("text_config", config).get("max_position_embeddings", 4096))
