"""Tier 3: a quantized GGUF model on CPU through llama.cpp, in process.

The prompt is the model's own chat template with the tools (runners/llama_prompt.py); tool calls are
grammar-constrained and read back out of the text (runners/llama_tools.py); n choices decode side by side
from one prefill of the prompt (runners/llama_choices.py turns the engine's events into deltas).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hardware.catalog import load_catalog, resolve_model_file
from hardware.errors import ConfigError
from hardware.fit import LLAMA_OVERHEAD, Need, gguf_shape, kv_bytes_per_token
from hardware.profile import Device
from runners.answer import Answer, AnswerBuilder, Delta
from runners.base import Runner, RunnerStatus, register_runner
from runners.capabilities import Capabilities
from runners.errors import ContextLengthExceeded, InvalidRequest, TierUnavailable
from runners.llama import EngineOptions, LlamaEngine, SamplingParams, layout
from runners.llama_choices import choice_deltas
from runners.llama_prompt import ChatPrompt
from runners.llama_tools import ToolPlan, plan_tools
from runners.request import Request


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threads: int | Literal["auto"] = Field(default="auto", description="CPU threads; auto = cores available")
    n_ctx: int = Field(default=2048, ge=256, le=131072, description="context window per request, in tokens")
    max_batch: int = Field(default=8, ge=1, le=64, description="requests decoded together")
    n_batch: int = Field(default=512, ge=32, le=8192, description="tokens per decode step, prefill included")
    max_queue: int = Field(default=64, ge=0, description="requests that may wait for a slot; more get 503")
    kv_unified: bool = Field(default=True, description=(
        "one KV cache shared by all sequences (fastest). false: one per sequence, so a request's tokens do not "
        "depend on what else is in the batch (same seed, same text), at a throughput cost"))
    prompt_cache_mib: int = Field(default=256, ge=0, le=1048576, description=(
        "host memory (MiB) for the KV of prompt prefixes no slot holds any more, restored when a prompt starts "
        "the same; 0 turns it off"))
    repack: bool | Literal["auto"] = Field(default="auto", description=(
        "lay the weights out at load for this CPU's fastest kernels (AMX, repacked AVX), as llama.cpp does by "
        "default; false keeps the GGUF's own layout, as llama-server's --no-repack. auto: true, except where "
        "llama.cpp would use its AMX kernels, whose matrix multiply crashed the process here (docs/profiles.md)"))

    def thread_count(self) -> int:
        return len(os.sched_getaffinity(0)) if self.threads == "auto" else self.threads


@register_runner
class LlamaCppRunner(Runner):
    kind = "llamacpp"
    Options = LlamaCppOptions
    options: LlamaCppOptions
    capabilities = Capabilities(tools=True, max_n=8, stream_n=True, min_tokens=True, penalties=False, prompt=True)

    def model_file(self) -> Path:
        if self.model_name.endswith(".gguf"):
            path = Path(self.model_name)
            if not path.is_file():
                raise ConfigError(f"tiers.{self.tier}.model: {path} does not exist; give a GGUF file or a catalog name")
            return path
        return resolve_model_file(self.model_name, load_catalog())

    def memory_need(self) -> Need:
        """The GGUF file, an f16 KV cache of n_ctx tokens for each of max_batch sequences, the prompt cache's
        host memory at most, and compute buffers."""
        size, layers, kv_heads, head_dim = gguf_shape(self.model_file())
        kv = kv_bytes_per_token(layers, kv_heads, head_dim) * self.options.n_ctx * self.options.max_batch
        kv += self.options.prompt_cache_mib << 20
        return Need(self.tier, self.placement.device or "cpu", self.device or Device(kind="cpu"), size, kv, LLAMA_OVERHEAD)

    async def start(self) -> None:
        self.lifecycle.to("starting")
        try:
            opts = self.options
            engine_options = EngineOptions(
                threads=opts.thread_count(), n_ctx=opts.n_ctx, max_batch=opts.max_batch, n_batch=opts.n_batch,
                max_queue=opts.max_queue, kv_unified=opts.kv_unified, prompt_cache_mib=opts.prompt_cache_mib,
                repack=layout.repacks(None if opts.repack == "auto" else opts.repack),  # on the loop: once, no race
            )
            model = await asyncio.to_thread(self.model_file)  # a first use joins and hashes the file: not on the loop
            self.engine = LlamaEngine(model, engine_options)
            await asyncio.to_thread(self.engine.load)
            template = self.engine.chat_template()
            if template is None:
                raise ConfigError(f"{self.model_name} has no chat template in its GGUF metadata; use an instruct model")
            bos, eos = self.engine.bos_eos()
            self._prompt = ChatPrompt(template, bos, eos)
        except Exception as exc:
            self.lifecycle.to("failed", str(exc))
            raise
        self.lifecycle.to("ready")

    async def stop(self) -> None:
        if self.lifecycle.state in ("ready", "failed") and hasattr(self, "engine"):
            await asyncio.to_thread(self.engine.close)
        self.lifecycle.to("stopped")

    def status(self) -> RunnerStatus:
        """An engine that died shows as failed at once; `check` then moves the lifecycle for the supervisor."""
        status = super().status()
        failure = self._engine_failure()
        if status.state == "ready" and failure:
            return status.model_copy(update={"state": "failed", "detail": failure})
        return status

    async def check(self) -> None:
        failure = self._engine_failure()
        if self.lifecycle.state == "ready" and failure:
            self.lifecycle.to("failed", failure)

    def _engine_failure(self) -> str | None:
        engine = getattr(self, "engine", None)
        return engine.failure if engine is not None else None

    # -- request translation ---------------------------------------------------------------
    def prepare(self, request: Request) -> tuple[list[int], SamplingParams, ToolPlan | None]:
        if not self.serving():
            state = self.status()
            raise TierUnavailable(f"tier {self.tier} ({self.model_name}) is {state.state}; see GET /ready")
        plan = plan_tools(request) if request.prompt is None else None
        if plan is not None and request.response_format is not None and request.response_format.type != "text":
            raise InvalidRequest("response_format: this tier constrains a tool call or a structured answer, not both at "
                                 "once; drop response_format, or send tool_choice none", param="response_format")
        if request.prompt is not None:
            prompt = self.engine.tokenize(request.prompt, add_special=True, parse_special=False)
        else:
            prompt = self.engine.tokenize(self._prompt.render(request), add_special=False, parse_special=True)
        n_ctx = self.options.n_ctx
        limit = request.max_tokens
        if len(prompt) >= n_ctx or (limit is not None and len(prompt) + limit > n_ctx):
            wanted = len(prompt) + (limit or 1)
            raise ContextLengthExceeded(
                f"this model's maximum context length is {n_ctx} tokens, but {wanted} were requested "
                f"({len(prompt)} in the messages, {limit or 1} in the completion); shorten the messages or max_tokens",
                param="messages",
            )
        params = SamplingParams(
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            seed=request.seed,
            max_tokens=limit or n_ctx - len(prompt),
            min_tokens=request.min_tokens or 0,
            stop=tuple(request.stop),
            grammar=plan.grammar if plan is not None else _grammar_for(request),
            grammar_lazy=plan is not None and plan.lazy,
            grammar_triggers=plan.triggers if plan is not None else (),
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs or 0,
        )
        return prompt, params, plan

    async def count_tokens(self, request: Request) -> int:
        """The prompt exactly as `prepare` renders and tokenizes it (too long for n_ctx: the same 400 it gets)."""
        prompt, _, _ = self.prepare(request.model_copy(update={"max_tokens": None}))
        return len(prompt)

    # -- answering --------------------------------------------------------------------------
    async def answer(self, request: Request) -> Answer:
        whole = AnswerBuilder(self.model_name)
        async for delta in self.answer_stream(request):
            whole.add(delta)
        return whole.answer()

    async def answer_stream(self, request: Request) -> AsyncIterator[Delta]:
        prompt, params, plan = self.prepare(request)
        generation = self.engine.generate(prompt, params, n=request.n)
        try:
            async for delta in choice_deltas(generation, request.n, plan, params.logprobs):
                yield delta
        finally:
            await generation.aclose()


def _grammar_for(request: Request) -> str | None:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = request.json_schema()
    if schema is None:
        return None
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except Exception as exc:  # the converter raises plain exceptions for schemas it cannot express
        raise InvalidRequest(f"the JSON schema cannot be enforced by a grammar: {exc}", param="response_format") from None
