"""Tier 2: a vLLM OpenAI server, either attached to by URL or started here as a supervised subprocess.

vLLM lives in its own virtual environment (`python` option, `.venv-vllm/bin/python` by default; `make
vllm-setup` makes it), so this module imports nothing of vLLM. The server runs in its own process
group: stopping the runner drains in-flight requests, then SIGTERMs the whole group (SIGKILL after
`stop_timeout_s`), so no engine process outlives the gateway. A crash sets the state to `failed`
with vLLM's last log lines; the supervisor restarts it with exponential backoff.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field

from hardware.detect import GiB
from hardware.errors import ConfigError
from runners.errors import InvalidRequest, TierUnavailable
from hardware.fit import VLLM_HOST_OVERHEAD, Need, hf_shape, kv_bytes_per_token
from hardware.profile import Device
from runners.base import Runner, register_runner
from runners.openai_http import OpenAIEndpoint, request_payload
from runners.procs import alive, die_with_parent, end_group, free_port
from runners.protocol import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest

log = logging.getLogger("tier_runner.vllm")
TAIL_LINES = 40


class VllmOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, pattern=r"^https?://",
                            description="attach to a vLLM server already running at this /v1 root; nothing is started")
    python: str = Field(default=".venv-vllm/bin/python",
                        description="interpreter of the environment that has vLLM (relative to the working directory)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(default="auto", description="weights and compute dtype")
    enforce_eager: bool = Field(default=False, description="--enforce-eager; needed for bf16 on CPU (else nonsense)")
    tensor_parallel_size: int = Field(default=1, ge=1, le=64, description="GPUs per replica (cuda devices from `index` on)")
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1, description="share of each GPU's memory vLLM may take")
    max_model_len: int | None = Field(default=None, ge=64, description="context window; default: the model's own")
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096, description="sequences decoded together")
    cpu_kvcache_space_gib: int | None = Field(default=None, ge=1, le=1024,
                                              description="VLLM_CPU_KVCACHE_SPACE: KV cache size on CPU, in GiB")
    port: int | None = Field(default=None, ge=1, le=65535, description="port on 127.0.0.1; default a free one")
    extra_args: list[str] = Field(default_factory=list, description="more vLLM server flags, passed as given")
    env: dict[str, str] = Field(default_factory=dict, description="more environment variables for the server")
    startup_timeout_s: float = Field(default=600, gt=0, description="longest wait for /health and /v1/models")
    stop_timeout_s: float = Field(default=15, gt=0, description="wait after SIGTERM before SIGKILL of the group")
    drain_timeout_s: float = Field(default=30, ge=0, description="wait for in-flight requests when stopping")
    health_failures: int = Field(default=3, ge=1, le=100, description="failed health probes in a row that mean failed")
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=300.0, gt=0, description="longest wait for the next byte of an answer")
    max_connections: int = Field(default=64, ge=1)


@register_runner
class VllmRunner(Runner):
    kind = "vllm"
    Options = VllmOptions
    options: VllmOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._proc: asyncio.subprocess.Process | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._tasks: list[asyncio.Task] = []
        self._endpoint: OpenAIEndpoint | None = None
        self._in_flight = 0
        self._probe_failures = 0
        self._stopping = False
        self.base_url = ""
        self.started_s: float | None = None  # seconds from spawn to ready, for logs and the README figures

    # -- what to start ------------------------------------------------------------------------
    def model_source(self) -> str:
        """A catalog name resolves to its local folder; a path is used as is; anything else is an HF id (offline)."""
        from hardware.catalog import load_catalog, resolve_model_file

        name = self.model_name
        catalog = load_catalog()
        if name in catalog.models:
            entry = catalog.models[name]
            if entry.format != "hf":
                raise ConfigError(f"tiers.{self.tier}.model: {name} is a {entry.format} file; vLLM needs a transformers "
                                  f"folder: convert it with `tier-runner models convert {name}` and use the converted entry")
            return str(resolve_model_file(name, catalog))
        path = Path(name).expanduser()
        if path.is_absolute() or name.startswith("."):
            if not (path / "config.json").is_file():
                raise ConfigError(f"tiers.{self.tier}.model: {path} is not a transformers folder (no config.json)")
            return str(path)
        return name  # an HF id: served only if it is already in the local HF cache (HF_HUB_OFFLINE=1)

    def memory_need(self) -> Need | None:
        """Weights, KV cache and vLLM's own processes; an attached server (url) is not ours to place."""
        if self.options.url:
            return None
        device = self.device or Device(kind="cpu")
        folder = Path(self.model_source())
        if not (folder / "config.json").is_file():
            return Need(self.tier, self.placement.device or "cpu", device, 0, 0, VLLM_HOST_OVERHEAD,
                        note="an HF id: its size is unknown until vLLM loads it")
        weights, layers, kv_heads, head_dim = hf_shape(folder)
        if device.kind == "cpu":
            kv = (self.options.cpu_kvcache_space_gib or 4) * GiB  # vLLM's CPU default is 4 GiB
            return Need(self.tier, self.placement.device or "cpu", device, weights, kv, VLLM_HOST_OVERHEAD)
        length = self.options.max_model_len or _max_positions(folder)
        kv = kv_bytes_per_token(layers, kv_heads, head_dim) * length
        return Need(self.tier, self.placement.device, device, weights // self.options.tensor_parallel_size,
                    kv // self.options.tensor_parallel_size, VLLM_HOST_OVERHEAD,
                    gpu_fraction=self.options.gpu_memory_utilization)

    def python(self) -> str:
        python = Path(self.options.python).expanduser()
        if not os.access(python, os.X_OK):
            raise ConfigError(f"tiers.{self.tier}.python: {python} is not an executable; create the vLLM environment "
                              "with `make vllm-setup`, or point `python` at an interpreter that has vLLM")
        return str(python)

    def command(self, model: str, port: int) -> list[str]:
        opts = self.options
        cmd = [self.python(), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--served-model-name", self.model_name, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", opts.dtype, "--tensor-parallel-size", str(opts.tensor_parallel_size),
               "--disable-uvicorn-access-log"]
        if self.device is not None and self.device.kind == "cuda":
            cmd += ["--gpu-memory-utilization", str(opts.gpu_memory_utilization)]
        if opts.max_model_len:
            cmd += ["--max-model-len", str(opts.max_model_len)]
        if opts.max_num_seqs:
            cmd += ["--max-num-seqs", str(opts.max_num_seqs)]
        if opts.enforce_eager:
            cmd.append("--enforce-eager")
        return cmd + list(opts.extra_args)

    def environment(self) -> dict[str, str]:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1"}
        if self.options.cpu_kvcache_space_gib:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.options.cpu_kvcache_space_gib)
        if self.device is not None and self.device.kind == "cuda":
            first = self.device.index or 0
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(first + i) for i in range(self.options.tensor_parallel_size))
        return {**env, **self.options.env}

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn (or attach) and return; readiness is awaited in the background and shown by status()."""
        self._stopping = False
        self._probe_failures = 0
        self._tail.clear()
        if self.options.url:
            self.base_url = self.options.url.rstrip("/").removesuffix("/v1")
            where = f"tier {self.tier} ({self.model_name}, vLLM at {self.options.url})"
        else:
            cmd = self.command(self.model_source(), self.options.port or free_port())
            self.base_url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
            where = f"tier {self.tier} ({self.model_name} on vLLM)"
        self._set_state("starting", f"waiting for {self.base_url}/health")
        self._endpoint = OpenAIEndpoint(
            f"{self.base_url}/v1", where=where, connect_timeout_s=self.options.connect_timeout_s,
            read_timeout_s=self.options.read_timeout_s, max_connections=self.options.max_connections,
            unreachable_hint="the vLLM server stopped answering; it is restarted automatically, see GET /ready")
        if not self.options.url:
            self._spawned_at = time.monotonic()
            self._proc = await asyncio.create_subprocess_exec(
                *cmd, env=self.environment(), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
            log.info("tier %s: started vLLM pid %s: %s", self.tier, self._proc.pid, " ".join(cmd))
            self._tasks = [asyncio.create_task(self._read_output(self._proc)),
                           asyncio.create_task(self._watch_exit(self._proc))]
        else:
            self._spawned_at = time.monotonic()
        self._tasks.append(asyncio.create_task(self._await_ready()))

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def _read_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self._tail.append(line)
                log.info("tier %s vllm[%s]: %s", self.tier, proc.pid, line)

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        # Not proc.wait(): asyncio resolves it only once every pipe is closed, and the engine processes hold
        # the output pipe after the API server died. returncode is set as soon as the server itself exits.
        while proc.returncode is None:
            await asyncio.sleep(0.2)
        code = proc.returncode
        if self._stopping:
            return
        last = " | ".join(list(self._tail)[-3:])
        self._set_state("failed", f"vLLM (pid {proc.pid}) exited with code {code}: {last}")
        log.error("tier %s: vLLM pid %s exited with code %s; last output: %s", self.tier, proc.pid, code, last)
        await end_group(proc.pid, self.options.stop_timeout_s)  # its engine processes must not outlive it

    async def _await_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout_s
        async with httpx.AsyncClient(timeout=5) as probe:
            while self._state == "starting" and not self._stopping:
                if time.monotonic() > deadline:
                    self._set_state("failed", f"vLLM was not ready after {self.options.startup_timeout_s:.0f} s: "
                                              + " | ".join(list(self._tail)[-3:]))
                    return
                try:
                    if (await probe.get(f"{self.base_url}/health")).status_code == 200:
                        models = (await probe.get(f"{self.base_url}/v1/models")).json()
                        served = [m.get("id") for m in models.get("data", [])]
                        if self.model_name not in served:
                            self._set_state("failed", f"the vLLM server at {self.base_url} serves {served}, not "
                                                      f"{self.model_name!r}; fix tiers.{self.tier}.model or url")
                            return
                        self.started_s = time.monotonic() - self._spawned_at
                        self._set_state("ready", f"vLLM pid {self.pid} at {self.base_url}" if self._proc
                                        else f"attached to {self.base_url}")
                        log.info("tier %s: vLLM ready in %.1f s at %s", self.tier, self.started_s, self.base_url)
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.5)

    async def check(self) -> None:
        """A ready server must answer /health; `health_failures` misses in a row mean failed."""
        if self._state != "ready" or self._endpoint is None:
            return
        try:
            ok = (await self._endpoint.client.get(f"{self.base_url}/health", timeout=5)).status_code == 200
        except httpx.HTTPError:
            ok = False
        self._probe_failures = 0 if ok else self._probe_failures + 1
        if self._probe_failures >= self.options.health_failures and self._state == "ready":
            self._set_state("failed", f"vLLM at {self.base_url} failed {self._probe_failures} health checks in a row")

    async def stop(self) -> None:
        """Drain in-flight requests, then end the server's whole process group."""
        self._stopping = True
        was = self._state
        self._set_state("stopped", "stopping")
        deadline = time.monotonic() + self.options.drain_timeout_s
        while self._in_flight and time.monotonic() < deadline and was == "ready":
            await asyncio.sleep(0.1)
        if self._proc is not None:
            await end_group(self._proc.pid, self.options.stop_timeout_s)
            try:
                await asyncio.wait_for(self._proc.wait(), timeout=5)
            except asyncio.TimeoutError:
                log.warning("tier %s: vLLM pid %s: output pipe still open after stop", self.tier, self._proc.pid)
            log.info("tier %s: vLLM pid %s stopped", self.tier, self._proc.pid)
            self._proc = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._endpoint is not None:
            await self._endpoint.aclose()
            self._endpoint = None
        self._set_state("stopped")

    # -- answering ----------------------------------------------------------------------------
    def _payload(self, request: ChatCompletionRequest, stream: bool) -> dict:
        if self._state != "ready" or self._endpoint is None:
            raise TierUnavailable(f"tier {self.tier} ({self.model_name} on vLLM) is {self._state}: {self._detail}; "
                                  "see GET /ready")
        if request.top_logprobs and not request.logprobs:
            raise InvalidRequest("top_logprobs needs logprobs=true", param="top_logprobs")
        payload = request_payload(request, self.model_name, stream)
        # vLLM 0.32 takes guided decoding as `structured_outputs`; the request keeps the classic field names.
        guided = {key: payload.pop(f"guided_{key}") for key in ("json", "choice", "regex") if f"guided_{key}" in payload}
        if len(guided) > 1:
            raise InvalidRequest("give only one of guided_json, guided_choice and guided_regex", param="guided_json")
        if guided and request.response_format is not None and request.response_format.type != "text":
            raise InvalidRequest("give either response_format or a guided_* field, not both", param="response_format")
        if guided:
            payload["structured_outputs"] = guided
        return payload

    async def complete(self, request: ChatCompletionRequest) -> ChatCompletion:
        payload = self._payload(request, stream=False)
        self._in_flight += 1
        try:
            return await self._endpoint.complete(payload)
        except TierUnavailable:
            await self._notice_death()
            raise
        finally:
            self._in_flight -= 1

    async def stream(self, request: ChatCompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        payload = self._payload(request, stream=True)
        endpoint = self._endpoint
        self._in_flight += 1
        try:
            async for chunk in endpoint.stream(payload):
                yield chunk
        except TierUnavailable:
            await self._notice_death()
            raise
        finally:
            self._in_flight -= 1

    async def _notice_death(self) -> None:
        """A broken connection: if the server process is gone (it may take a moment to finish dying), say so
        on /ready before the client hears of it, not at the next probe."""
        proc = self._proc
        deadline = time.monotonic() + 1.0
        while proc is not None and proc is self._proc and self._state == "ready" and not self._stopping:
            if proc.returncode is not None or not alive(proc.pid):
                self._set_state("failed", f"vLLM (pid {proc.pid}) died while answering: "
                                          + " | ".join(list(self._tail)[-3:]))
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)


def _max_positions(folder: Path) -> int:
    import json

    config = json.loads((folder / "config.json").read_text())
    return int(config.get("text_config", config).get("max_position_embeddings", 4096))
