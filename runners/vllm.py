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
import re
import time
from collections.abc import AsyncIterator

import httpx

from hardware.fit import Need
from hardware.redact import redact, redact_argv, secret_values
from runners import vllm_launch as launch
from runners.errors import InvalidRequest, TierUnavailable
from runners.answer import Answer, Delta
from runners.base import Runner, register_runner
from runners.capabilities import Capabilities
from runners.openai_http import CHAT, TEXT, OpenAIEndpoint
from runners.procs import alive, die_with_parent, end_group, free_port
from runners.request import Request
from runners.wire import openai_chat, openai_completions

log = logging.getLogger("tier_runner.vllm")
TAIL_LINES = 40
VLLM_LEVEL = re.compile(r"^(?:\(\S+ pid=\d+\) )?(WARNING|ERROR|CRITICAL)\b")


def relay_level(line: str) -> int:
    """vLLM's own warnings and errors keep their level in our log; the rest (request lines carry prompts) is DEBUG."""
    match = VLLM_LEVEL.match(line)
    return getattr(logging, match.group(1)) if match else logging.DEBUG


@register_runner
class VllmRunner(Runner):
    kind = "vllm"
    Options = launch.VllmOptions
    capabilities = Capabilities(tools=True, max_n=8, stream_n=True, min_tokens=True, guided=True, prompt=True)
    options: launch.VllmOptions

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._proc: asyncio.subprocess.Process | None = None
        self._tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._tasks: list[asyncio.Task] = []
        self._endpoint: OpenAIEndpoint | None = None
        self._probe_failures = 0
        self._stopping = False
        self.base_url = ""
        self.started_s: float | None = None  # seconds from spawn to ready, for logs and the README figures

    @property
    def startup_timeout_s(self) -> float:
        return self.options.startup_timeout_s + 30  # it marks itself failed at its own timeout first

    def model_source(self) -> str:
        return launch.model_source(self.tier, self.model_name)

    def memory_need(self) -> Need | None:
        needs = self.memory_needs()
        return needs[0] if needs else None

    def memory_needs(self) -> list[Need]:
        return launch.memory_needs(self, self.replica)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn (or attach) and return; readiness is awaited in the background and shown by status()."""
        self._stopping = False
        self._probe_failures = 0
        self._tail.clear()
        self._secrets: list[str] = []  # values of secret flags and variables, scrubbed from vLLM's output
        if self.options.url:
            self.base_url = self.options.url.rstrip("/").removesuffix("/v1")
            where = f"tier {self.tier} ({self.model_name}, vLLM at {self.options.url})"
        else:
            cmd = launch.command(self, self.model_source(), self.options.port or free_port())
            self.base_url = f"http://127.0.0.1:{cmd[cmd.index('--port') + 1]}"
            where = f"tier {self.tier} ({self.model_name} on vLLM)"
        self.lifecycle.to("starting", f"waiting for {self.base_url}/health")
        self._endpoint = OpenAIEndpoint(
            f"{self.base_url}/v1", where=where, connect_timeout_s=self.options.connect_timeout_s,
            read_timeout_s=self.options.read_timeout_s, max_connections=self.options.max_connections,
            unreachable_hint="the vLLM server stopped answering; it is restarted automatically, see GET /ready")
        if not self.options.url:
            self._spawned_at = time.monotonic()
            env = launch.environment(self)
            self._secrets = secret_values(cmd, env)
            self._proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent)
            log.info("tier %s: started vLLM pid %s: %s", self.tier, self._proc.pid, " ".join(redact_argv(cmd)))
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
            line = redact(raw.decode("utf-8", "replace").rstrip(), self._secrets)
            if line:
                self._tail.append(line)
                log.log(relay_level(line), "tier %s vllm[%s]: %s", self.tier, proc.pid, line)

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        # Not proc.wait(): asyncio resolves it only once every pipe is closed, and the engine processes hold
        # the output pipe after the API server died. returncode is set as soon as the server itself exits.
        while proc.returncode is None:
            await asyncio.sleep(0.2)
        code = proc.returncode
        if self._stopping:
            return
        last = " | ".join(list(self._tail)[-3:])
        self.lifecycle.to("failed", f"vLLM (pid {proc.pid}) exited with code {code}: {last}")
        log.error("tier %s: vLLM pid %s exited with code %s; last output: %s", self.tier, proc.pid, code, last)
        await end_group(proc.pid, self.options.stop_timeout_s)  # its engine processes must not outlive it

    async def _await_ready(self) -> None:
        deadline = time.monotonic() + self.options.startup_timeout_s
        async with httpx.AsyncClient(timeout=5) as probe:
            while self.lifecycle.state == "starting" and not self._stopping:
                if time.monotonic() > deadline:
                    self.lifecycle.to("failed", f"vLLM was not ready after {self.options.startup_timeout_s:.0f} s: "
                                              + " | ".join(list(self._tail)[-3:]))
                    return
                try:
                    if (await probe.get(f"{self.base_url}/health")).status_code == 200:
                        models = (await probe.get(f"{self.base_url}/v1/models")).json()
                        served = [m.get("id") for m in models.get("data", [])]
                        if self.model_name not in served:
                            self.lifecycle.to("failed", f"the vLLM server at {self.base_url} serves {served}, not "
                                                      f"{self.model_name!r}; fix tiers.{self.tier}.model or url")
                            return
                        self.started_s = time.monotonic() - self._spawned_at
                        self.lifecycle.to("ready", f"vLLM pid {self.pid} at {self.base_url}" if self._proc
                                        else f"attached to {self.base_url}")
                        log.info("tier %s: vLLM ready in %.1f s at %s", self.tier, self.started_s, self.base_url)
                        return
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.5)

    async def check(self) -> None:
        """A ready server must answer /health; `health_failures` misses in a row mean failed."""
        if self.lifecycle.state != "ready" or self._endpoint is None:
            return
        ok = await self._endpoint.healthy(f"{self.base_url}/health")
        self._probe_failures = 0 if ok else self._probe_failures + 1
        if self._probe_failures >= self.options.health_failures and self.lifecycle.state == "ready":
            self.lifecycle.to("failed", f"vLLM at {self.base_url} failed {self._probe_failures} health checks in a row")

    async def stop(self) -> None:
        """Drain in-flight requests, then end the server's whole process group."""
        self._stopping = True
        was = self.lifecycle.state
        self.lifecycle.to("stopped", "stopping")
        deadline = time.monotonic() + self.options.drain_timeout_s
        while self.in_flight and time.monotonic() < deadline and was == "ready":
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
        self.lifecycle.to("stopped")

    # -- answering ----------------------------------------------------------------------------
    def _payload(self, request: Request, stream: bool) -> dict:
        if self.lifecycle.state != "ready" or self._endpoint is None:
            state = self.lifecycle
            raise TierUnavailable(f"tier {self.tier} ({self.model_name} on vLLM) is {state.state}: {state.detail}; "
                                  "see GET /ready")
        wire = openai_chat if request.prompt is None else openai_completions  # a prompt goes to /v1/completions
        payload = wire.to_payload(request, self.model_name, stream)
        # vLLM 0.32 takes guided decoding as `structured_outputs`; the request keeps the classic field names.
        guided = {key: payload.pop(f"guided_{key}") for key in ("json", "choice", "regex") if f"guided_{key}" in payload}
        if len(guided) > 1:
            raise InvalidRequest("give only one of guided_json, guided_choice and guided_regex", param="guided_json")
        if guided and request.response_format is not None and request.response_format.type != "text":
            raise InvalidRequest("give either response_format or a guided_* field, not both", param="response_format")
        if guided:
            payload["structured_outputs"] = guided
        return payload

    async def count_tokens(self, request: Request) -> int:
        """vLLM's own /tokenize: the chat template (and tools) applied as for an answer, or the bare prompt."""
        payload = self._payload(request, stream=False)
        body = {k: payload[k] for k in ("model", "messages", "prompt", "tools") if k in payload}
        if "messages" in body:
            body["add_generation_prompt"] = True
        return await self._endpoint.post(f"{self.base_url}/tokenize", body, lambda data: int(data["count"]),
                                         "a token count")

    async def answer(self, request: Request) -> Answer:
        payload = self._payload(request, stream=False)
        try:
            return await self._endpoint.complete(payload, CHAT if request.prompt is None else TEXT)
        except TierUnavailable:
            await self._notice_death()
            raise

    async def answer_stream(self, request: Request) -> AsyncIterator[Delta]:
        payload = self._payload(request, stream=True)
        endpoint = self._endpoint
        try:
            async for chunk in endpoint.stream(payload, CHAT if request.prompt is None else TEXT):
                yield chunk
        except TierUnavailable:
            await self._notice_death()
            raise

    async def _notice_death(self) -> None:
        """A broken connection: if the server process is gone (it may take a moment to finish dying), say so
        on /ready before the client hears of it, not at the next probe."""
        proc = self._proc
        deadline = time.monotonic() + 1.0
        while proc is not None and proc is self._proc and self.lifecycle.state == "ready" and not self._stopping:
            if proc.returncode is not None or not alive(proc.pid):
                self.lifecycle.to("failed", f"vLLM (pid {proc.pid}) died while answering: "
                                          + " | ".join(list(self._tail)[-3:]))
                return
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.05)
