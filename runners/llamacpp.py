"""Tier 3: a quantized GGUF model on CPU through llama.cpp, in process."""

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
from runners.answer import Answer, Choice, ChoiceDelta, Delta, TokenLogprob, TopLogprob, Usage
from runners.base import Runner, RunnerStatus, register_runner
from runners.capabilities import Capabilities
from runners.errors import ContextLengthExceeded, InvalidRequest, TierUnavailable
from runners.llama import EngineOptions, Finished, LlamaEngine, Piece, SamplingParams, TokenInfo
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

    def thread_count(self) -> int:
        return len(os.sched_getaffinity(0)) if self.threads == "auto" else self.threads


@register_runner
class LlamaCppRunner(Runner):
    kind = "llamacpp"
    Options = LlamaCppOptions
    options: LlamaCppOptions
    capabilities = Capabilities(penalties=False, prompt=True)

    def model_file(self) -> Path:
        if self.model_name.endswith(".gguf"):
            path = Path(self.model_name)
            if not path.is_file():
                raise ConfigError(f"tiers.{self.tier}.model: {path} does not exist; give a GGUF file or a catalog name")
            return path
        return resolve_model_file(self.model_name, load_catalog())

    def memory_need(self) -> Need:
        """The GGUF file, an f16 KV cache of n_ctx tokens for each of max_batch sequences, and compute buffers."""
        size, layers, kv_heads, head_dim = gguf_shape(self.model_file())
        kv = kv_bytes_per_token(layers, kv_heads, head_dim) * self.options.n_ctx * self.options.max_batch
        return Need(self.tier, self.placement.device or "cpu", self.device or Device(kind="cpu"), size, kv, LLAMA_OVERHEAD)

    async def start(self) -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.lifecycle.to("starting")
        try:
            opts = self.options
            engine_options = EngineOptions(
                threads=opts.thread_count(), n_ctx=opts.n_ctx, max_batch=opts.max_batch, n_batch=opts.n_batch,
                max_queue=opts.max_queue, kv_unified=opts.kv_unified,
            )
            model = await asyncio.to_thread(self.model_file)  # a first use joins and hashes the file: not on the loop
            self.engine = LlamaEngine(model, engine_options)
            await asyncio.to_thread(self.engine.load)
            template = self.engine.chat_template()
            if template is None:
                raise ConfigError(f"{self.model_name} has no chat template in its GGUF metadata; use an instruct model")
            bos, eos = self.engine.bos_eos()
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
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
    def prepare(self, request: Request) -> tuple[list[int], SamplingParams]:
        if not self.serving():
            state = self.status()
            raise TierUnavailable(f"tier {self.tier} ({self.model_name}) is {state.state}; see GET /ready")
        if request.prompt is not None:
            prompt = self.engine.tokenize(request.prompt, add_special=True, parse_special=False)
        else:
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in request.messages]
            prompt_text = self._formatter(messages=messages).prompt
            prompt = self.engine.tokenize(prompt_text, add_special=False, parse_special=True)
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
            stop=tuple(request.stop),
            grammar=_grammar_for(request),
            logprobs=request.logprobs,
            top_logprobs=request.top_logprobs or 0,
        )
        return prompt, params

    async def count_tokens(self, request: Request) -> int:
        """The prompt exactly as `prepare` renders and tokenizes it (too long for n_ctx: the same 400 it gets)."""
        prompt, _ = self.prepare(request.model_copy(update={"max_tokens": None}))
        return len(prompt)

    # -- answering --------------------------------------------------------------------------
    async def answer(self, request: Request) -> Answer:
        prompt, params = self.prepare(request)
        text: list[str] = []
        tokens: list[TokenInfo] = []
        finished: Finished | None = None
        async for event in self.engine.generate(prompt, params):
            if isinstance(event, Piece):
                text.append(event.text)
                tokens.extend(event.tokens)
            else:
                finished = event
        assert finished is not None
        choice = Choice(text="".join(text), finish_reason=finished.reason,
                        logprobs=_logprobs(tokens) if params.logprobs else None)
        return Answer(model=self.model_name, choices=[choice], usage=_usage(finished))

    async def answer_stream(self, request: Request) -> AsyncIterator[Delta]:
        prompt, params = self.prepare(request)
        generation = self.engine.generate(prompt, params)
        try:
            async for event in generation:
                if isinstance(event, Piece):
                    logprobs = _logprobs(event.tokens) if params.logprobs else None
                    yield Delta(choices=[ChoiceDelta(text=event.text, logprobs=logprobs)])
                else:
                    yield Delta(choices=[ChoiceDelta(finish_reason=event.reason)])
                    yield Delta(usage=_usage(event))
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


def _usage(finished: Finished) -> Usage:
    return Usage(prompt_tokens=finished.prompt_tokens, completion_tokens=finished.completion_tokens)


def _logprobs(tokens: list[TokenInfo]) -> list[TokenLogprob]:
    return [TokenLogprob(token=t.text, logprob=t.logprob, bytes=list(t.token_bytes),
                         top_logprobs=[TopLogprob(token=s, bytes=list(b), logprob=lp) for s, b, lp in t.top])
            for t in tokens]
