"""Continuous batching over llama.cpp's batch API: many sequences share one context and decode together.

llama-cpp-python's `Llama` decodes one sequence at a time. Here each request gets its own `seq_id` in a
unified KV cache and its own sampler chain (grammar, top_p, temperature, seed); all active sequences
advance in one `llama_decode` per step, and new prompts are prefilled in chunks between steps so that
running streams do not stall. Every llama.cpp call happens on the engine thread.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import logging
import math
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hardware.errors import ConfigError
from runners.errors import InvalidRequest, Overloaded, RunnerFailed

_log = logging.getLogger("tier_runner.engine")


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    grammar: str | None = None
    logprobs: bool = False
    top_logprobs: int = 0


@dataclass
class TokenInfo:
    """One generated token with its log-probability and the most likely alternatives."""

    text: str
    token_bytes: bytes
    logprob: float
    top: list[tuple[str, bytes, float]]


@dataclass
class Piece:
    text: str
    tokens: list[TokenInfo]


@dataclass
class Finished:
    reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class EngineOptions:
    threads: int
    n_ctx: int  # per sequence
    max_batch: int  # sequences decoded together
    n_batch: int  # tokens per decode step, prefill chunks included
    max_queue: int  # requests waiting for a slot before new ones are refused
    kv_unified: bool = True  # one KV buffer for all sequences (fastest); False: one per sequence, batch-invariant


@dataclass
class _Sequence:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    sampler: int = 0
    slot: int = -1
    n_prefilled: int = 0
    pending: int | None = None  # sampled token that still has to be decoded
    n_generated: int = 0
    text: str = ""
    emitted: int = 0
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    token_infos: list[TokenInfo] = field(default_factory=list)
    cancelled: bool = False
    done: bool = False

    @property
    def position(self) -> int:
        return len(self.prompt) + self.n_generated - 1


class LlamaEngine:
    """Owns one model, one context and the decode thread."""

    def __init__(self, model_path: Path, options: EngineOptions):
        self.model_path = model_path
        self.options = options
        self._lock = threading.Condition()
        self._waiting: deque[_Sequence] = deque()
        self._active: list[_Sequence] = []
        self._free_slots: list[int] = list(range(options.max_batch))
        # prompt tokens whose KV each slot still holds: a new prompt that starts the same reuses them
        self._slot_tokens: list[list[int]] = [[] for _ in range(options.max_batch)]
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failure: str | None = None
        self._outbox: list[tuple[_Sequence, object]] = []
        self.stats = {"steps": 0, "decode_s": 0.0, "step_s": 0.0, "tokens": 0, "reused": 0}

    # -- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        import llama_cpp as ll

        logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)  # llama.cpp's load chatter
        self._ll = ll
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        self._model = ll.llama_model_load_from_file(str(self.model_path).encode(), mparams)
        if not self._model:
            raise ConfigError(f"llama.cpp could not load {self.model_path}; is it a valid GGUF file?")
        self._vocab = ll.llama_model_get_vocab(self._model)
        self.n_vocab = ll.llama_vocab_n_tokens(self._vocab)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = self.options.n_ctx * self.options.max_batch
        cparams.n_batch = self.options.n_batch
        cparams.n_ubatch = self.options.n_batch
        cparams.n_seq_max = self.options.max_batch
        cparams.kv_unified = self.options.kv_unified
        cparams.n_threads = self.options.threads
        cparams.n_threads_batch = self.options.threads
        cparams.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise ConfigError(
                f"llama.cpp could not create a context of {cparams.n_ctx} tokens; lower n_ctx or max_batch in the profile"
            )
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(self.options.n_batch, 0, 1)
        self._thread = threading.Thread(target=self._run, name="llama-engine", daemon=True)
        self._thread.start()

    def close(self) -> None:
        st = self.stats
        _log.info("llama engine: %d steps, %d tokens decoded, %d prompt tokens reused from cache, decode %.2f s, step %.2f s",
                  st["steps"], st["tokens"], st["reused"], st["decode_s"], st["step_s"])
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        ll = self._ll
        ll.llama_batch_free(self._batch)
        ll.llama_free(self._ctx)
        ll.llama_model_free(self._model)

    @property
    def failure(self) -> str | None:
        return self._failure

    # -- model facts used by the runner -------------------------------------------------------
    def chat_template(self) -> str | None:
        raw = self._ll.llama_model_chat_template(self._model, None)
        return raw.decode("utf-8") if raw else None

    def token_text(self, token: int) -> str:
        return self._ll.llama_vocab_get_text(self._vocab, token).decode("utf-8", "replace")

    def bos_eos(self) -> tuple[str, str]:
        ll = self._ll
        return self.token_text(ll.llama_vocab_bos(self._vocab)), self.token_text(ll.llama_vocab_eos(self._vocab))

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (self._ll.llama_token * capacity)()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:
            buf = (self._ll.llama_token * -n)()
            n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, -n, add_special, parse_special)
        return list(buf[:n])

    def _piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = self._ll.llama_token_to_piece(self._vocab, token, buf, 64, 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._ll.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        return buf.raw[:n]

    # -- requests --------------------------------------------------------------------------
    async def generate(self, prompt: list[int], params: SamplingParams):
        """Yield Piece events, then one Finished; closing the generator cancels the sequence."""
        if self._failure:
            raise RunnerFailed(f"the llama.cpp engine stopped: {self._failure}; restart the server")
        seq = _Sequence(prompt=prompt, params=params, loop=asyncio.get_running_loop(), queue=asyncio.Queue())
        seq.sampler = self._make_sampler(params)
        with self._lock:
            # requests beyond the free slots wait; only those count against max_queue
            if len(self._waiting) >= self.options.max_queue + len(self._free_slots):
                self._ll.llama_sampler_free(seq.sampler)
                raise QueueFull(self.options.max_queue)
            self._waiting.append(seq)
            self._lock.notify_all()
        try:
            while True:
                event = await seq.queue.get()
                if isinstance(event, Exception):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            if not seq.done:
                with self._lock:
                    seq.cancelled = True
                    self._lock.notify_all()

    def _make_sampler(self, params: SamplingParams) -> int:
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if params.grammar is not None:
            grammar = ll.llama_sampler_init_grammar(self._vocab, params.grammar.encode(), b"root")
            if not grammar:
                ll.llama_sampler_free(chain)
                raise InvalidRequest("the response format could not be turned into a grammar", param="response_format")
            ll.llama_sampler_chain_add(chain, grammar)
        if params.temperature == 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        else:
            seed = params.seed if params.seed is not None else random.getrandbits(32)
            if params.top_p < 1:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(params.top_p, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(params.temperature))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    # -- the decode loop (engine thread) -------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    self._drop_cancelled()
                    self._admit()
                    while not self._active and not self._stopping:
                        self._lock.wait()
                        self._drop_cancelled()
                        self._admit()
                    if self._stopping:
                        break
                    active = list(self._active)
                self._step(active)
        except Exception as exc:  # the engine must never die silently: fail everyone, say why
            self._failure = f"{exc.__class__.__name__}: {exc}"
        finally:
            with self._lock:
                error = RunnerFailed(f"the llama.cpp engine stopped ({self._failure or 'shutting down'})")
                for seq in list(self._active) + list(self._waiting):
                    self._finish(seq, error)
                self._waiting.clear()
                self._flush_outbox()

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            seq = self._waiting.popleft()
            if seq.cancelled:
                self._release(seq)
                continue
            self._assign_slot(seq)
            self._active.append(seq)

    def _assign_slot(self, seq: _Sequence) -> None:
        """Take the free slot whose cached prompt shares the longest prefix with this one and keep that KV.

        With a unified KV cache a longer prefix held by any other slot (running or free) is shared into
        the chosen slot instead (llama.cpp tags the same cells with both sequence ids: no copy, no compute).
        At least the prompt's last token is always decoded again, for its logits.
        """
        ll, mem = self._ll, self._mem
        limit = len(seq.prompt) - 1

        def common(slot: int) -> int:
            cached = self._slot_tokens[slot]
            n = 0
            for a, b in zip(cached, seq.prompt[:limit]):
                if a != b:
                    break
                n += 1
            return n

        slot = max(self._free_slots, key=common)
        self._free_slots.remove(slot)
        keep = common(slot)
        if self.options.kv_unified:
            donors = [s.slot for s in self._active] + [s for s in self._free_slots]
            best = max(donors, key=common, default=-1)
            if best >= 0 and common(best) > keep:
                keep = common(best)
                ll.llama_memory_seq_rm(mem, slot, -1, -1)
                ll.llama_memory_seq_cp(mem, best, slot, 0, keep)
        ll.llama_memory_seq_rm(mem, slot, keep, -1)
        self._slot_tokens[slot] = seq.prompt[:keep]
        seq.slot = slot
        seq.n_prefilled = keep
        self.stats["reused"] += keep

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self._active if s.cancelled]:
            self._release(seq)
        for seq in [s for s in self._waiting if s.cancelled]:
            self._waiting.remove(seq)
            self._release(seq)

    def _release(self, seq: _Sequence) -> None:
        """Free the sequence's KV cells, sampler and slot at once (lock held)."""
        if seq in self._active:
            self._active.remove(seq)
        if seq.slot >= 0:  # keep the prompt's KV for a later prompt with the same prefix; drop the rest
            self._ll.llama_memory_seq_rm(self._mem, seq.slot, seq.n_prefilled, -1)
            self._slot_tokens[seq.slot] = seq.prompt[: seq.n_prefilled]
            self._free_slots.append(seq.slot)
            seq.slot = -1
        if seq.sampler:
            self._ll.llama_sampler_free(seq.sampler)
            seq.sampler = 0
        seq.done = True

    def _finish(self, seq: _Sequence, event: object) -> None:
        self._release(seq)
        self._outbox.append((seq, event))

    def _step(self, active: list[_Sequence]) -> None:
        ll, batch = self._ll, self._batch
        n = 0
        wants_logits: list[tuple[_Sequence, int]] = []

        def add(seq: _Sequence, token: int, pos: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq.slot
            batch.logits[n] = logits
            if logits:
                wants_logits.append((seq, n))
            n += 1

        for seq in active:  # one token each for running sequences: streams never wait on a prefill
            if seq.pending is not None:
                add(seq, seq.pending, seq.position, True)
        budget = self.options.n_batch - n
        for seq in active:
            remaining = len(seq.prompt) - seq.n_prefilled
            if seq.pending is not None or remaining == 0 or budget == 0:
                continue
            take = min(remaining, budget)
            for i in range(seq.n_prefilled, seq.n_prefilled + take):
                add(seq, seq.prompt[i], i, i == len(seq.prompt) - 1)
            seq.n_prefilled += take
            self._slot_tokens[seq.slot] = seq.prompt[: seq.n_prefilled]
            budget -= take
        batch.n_tokens = n
        t0 = time.perf_counter()
        status = ll.llama_decode(self._ctx, batch)
        t1 = time.perf_counter()
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for seq, index in wants_logits:
            self._sample(seq, index)
        self._flush_outbox()
        stats = self.stats
        stats["steps"] += 1
        stats["tokens"] += n
        stats["decode_s"] += t1 - t0
        stats["step_s"] += time.perf_counter() - t0

    def _flush_outbox(self) -> None:
        """Deliver this step's events with one wake-up per event loop, not one per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, object]]] = {}
        for seq, event in self._outbox:
            by_loop.setdefault(seq.loop, []).append((seq.queue, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed (shutdown): nobody is listening
                pass

    def _sample(self, seq: _Sequence, index: int) -> None:
        ll = self._ll
        info = None
        if seq.params.logprobs:
            logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))
            log_probs = logits - _logsumexp(logits)
        token = ll.llama_sampler_sample(seq.sampler, self._ctx, index)
        seq.n_generated += 1
        seq.pending = token
        if ll.llama_vocab_is_eog(self._vocab, token):
            self._complete(seq, "stop")
            return
        raw = self._piece(token)
        if seq.params.logprobs:
            info = self._token_info(token, raw, log_probs, seq.params.top_logprobs)
        seq.text += seq.decoder.decode(raw)
        if info is not None:
            seq.token_infos.append(info)
        stop_at = _find_stop(seq.text, seq.params.stop)
        if stop_at is not None:
            seq.text = seq.text[:stop_at]
            self._complete(seq, "stop")
            return
        if seq.n_generated >= seq.params.max_tokens or seq.position + 1 >= self.options.n_ctx:
            self._complete(seq, "length")
            return
        safe = len(seq.text) - _holdback(seq.text, seq.params.stop)
        if safe > seq.emitted or seq.token_infos:
            self._emit(seq, safe)

    def _emit(self, seq: _Sequence, upto: int) -> None:
        piece = Piece(text=seq.text[seq.emitted : upto], tokens=seq.token_infos)
        seq.emitted = max(seq.emitted, upto)
        seq.token_infos = []
        self._outbox.append((seq, piece))

    def _complete(self, seq: _Sequence, reason: str) -> None:
        seq.text += seq.decoder.decode(b"", final=True) if reason == "length" else ""
        if len(seq.text) > seq.emitted or seq.token_infos:
            self._emit(seq, len(seq.text))
        with self._lock:
            self._finish(seq, Finished(reason, len(seq.prompt), seq.n_generated))

    def _token_info(self, token: int, raw: bytes, log_probs: np.ndarray, top_n: int) -> TokenInfo:
        top: list[tuple[str, bytes, float]] = []
        if top_n:
            best = np.argpartition(-log_probs, top_n)[:top_n]
            for candidate in sorted(best, key=lambda t: -log_probs[t]):
                piece = self._piece(int(candidate))
                top.append((piece.decode("utf-8", "replace"), piece, float(log_probs[candidate])))
        return TokenInfo(raw.decode("utf-8", "replace"), raw, float(log_probs[token]), top)


class QueueFull(Overloaded):
    def __init__(self, limit: int):
        super().__init__(f"Tier 3 has {limit} requests waiting already; retry shortly or raise max_queue in the profile")



def _deliver(items: list[tuple[asyncio.Queue, object]]) -> None:
    for queue, event in items:
        queue.put_nowait(event)


def _logsumexp(x: np.ndarray) -> float:
    top = float(x.max())
    return top + math.log(float(np.exp(x - top).sum()))


def _find_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might be the start of a stop string, so are not sent yet."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                longest = max(longest, k)
                break
    return longest
