"""Continuous batching over llama.cpp's batch API: many sequences share one context and decode together.

llama-cpp-python's `Llama` decodes one sequence at a time. Here each sequence gets its own `seq_id` in one
context and its own sampler chain, and all of them advance in one `llama_decode` per step (scheduler.py).

One thread, the engine thread, owns llama.cpp: it loads the model, builds and frees samplers and
grammars, decodes, samples, and frees the model when it ends, so nothing can be freed under a running
decode and the event loop never blocks on llama.cpp. The one call made on the caller's thread is
tokenizing (read-only on the vocab, as llama-server does from its HTTP threads); a guard keeps the vocab
alive while it runs and refuses once the engine has stopped.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from pathlib import Path

import numpy as np

from hardware.errors import ConfigError
from runners.errors import ContextLengthExceeded, InvalidRequest, RunnerFailed, TierUnavailable
from runners.llama import sampling
from runners.llama.prompt_cache import PromptCache
from runners.llama.scheduler import Scheduler
from runners.llama.slots import Slots
from runners.llama.types import EngineOptions, Finished, QueueFull, Request, SamplingParams

_log = logging.getLogger("tier_runner.engine")
_STACK_BYTES = 64 << 20  # std::regex (lazy grammar triggers) recurses per character of the output


class LlamaEngine:
    """Owns one model, one context and the engine thread."""

    def __init__(self, model_path: Path, options: EngineOptions):
        self.model_path = model_path
        self.options = options
        self.scheduler = Scheduler(options)
        self._guard = threading.Lock()  # held while tokenizing, and while the engine thread frees the vocab
        self._llama: _Llama | None = None
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._failure: str | None = None

    @property
    def stats(self) -> dict:
        """The scheduler's counters, and how many prefixes the host-memory prompt cache restored, or could not
        for want of room in the KV cache."""
        slots = getattr(self.scheduler, "slots", None)  # there once the engine thread has opened the model
        return {**self.scheduler.stats, "restored": slots.cache.restored if slots else 0,
                "restore_refused": slots.cache.refused if slots else 0}

    @property
    def failure(self) -> str | None:
        return self._failure

    # -- lifecycle -----------------------------------------------------------------------------
    def load(self) -> None:
        """Start the engine thread and wait until it has loaded the model (raises what loading raised)."""
        previous = threading.stack_size(_STACK_BYTES)
        try:
            self._thread = threading.Thread(target=self._main, name="llama-engine", daemon=True)
            self._thread.start()
        finally:
            threading.stack_size(previous)
        self._opened.wait()
        if self._open_error is not None:
            raise self._open_error

    def close(self, wait_s: float = 120) -> None:
        """Stop the engine: requests still here get 503, then the thread frees the model when its last
        decode returns. Waits up to wait_s for that; past it the thread still frees the model itself."""
        with self.scheduler.lock:
            self.scheduler.stopping = True
            self.scheduler.accepting = False
            self.scheduler.lock.notify_all()
        if self._thread is None:
            return
        self._thread.join(timeout=wait_s)
        if self._thread.is_alive():
            _log.error("llama engine: still inside llama_decode after %.0f s; it frees the model when that returns",
                       wait_s)
            return
        st = self.stats
        _log.info("llama engine: %d steps, %d tokens decoded, %d prompt tokens reused from cache (%d prefixes restored "
                  "from host memory), %d KV-full retries, decode %.2f s, step %.2f s", st["steps"], st["tokens"],
                  st["reused"], st["restored"], st["kv_full"], st["decode_s"], st["step_s"])

    def _main(self) -> None:
        try:
            llama = _Llama(self.model_path, self.options)
            self.scheduler.attach(llama, sampling.Samplers(llama.ll, llama.vocab, llama.n_vocab),
                                  Slots(llama.ll, llama.mem, self.options.max_batch, self.options.kv_unified,
                                        PromptCache(llama.ll, llama.ctx, llama.mem, self.options.prompt_cache_mib << 20)))
            self._llama = llama
        except BaseException as exc:
            self._open_error = exc
            self._opened.set()
            return
        with self.scheduler.lock:
            self.scheduler.accepting = not self.scheduler.stopping
        self._opened.set()
        def error() -> Exception:
            if self._failure is None:
                return TierUnavailable(self._stopped_message())
            return RunnerFailed(f"the Tier 3 llama.cpp engine failed while answering ({self._failure}); "
                                "restart the server")

        try:
            self.scheduler.run()
        except BaseException as exc:  # the engine must never die silently: fail everyone, say why
            self._failure = f"{exc.__class__.__name__}: {exc}"
            _log.exception("llama engine failed")
        finally:
            with self.scheduler.lock:
                self.scheduler.accepting = False
                self.scheduler.fail_everyone(error)
            with self._guard:
                self._llama = None
                llama.free()

    def _stopped_message(self) -> str:
        if self._failure:
            return (f"the Tier 3 llama.cpp engine stopped after an error ({self._failure}); restart the server "
                    "(GET /ready shows the tier as failed)")
        if self._thread is None:
            return "the Tier 3 llama.cpp engine has not started yet; wait until GET /ready says the tier is ready"
        return ("the Tier 3 llama.cpp engine has stopped: the server is shutting down or reloading the tier; "
                "retry shortly, or restart the server if this persists")

    # -- model facts used by the runner (read at load) ------------------------------------------
    def chat_template(self) -> str | None:
        return self._loaded().chat_template

    def bos_eos(self) -> tuple[str, str]:
        llama = self._loaded()
        return llama.bos, llama.eos

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        with self._guard:
            return self._loaded().tokenize(text, add_special, parse_special)

    def token_bytes(self, token: int) -> bytes:
        with self._guard:
            return self._loaded().piece(token)

    def _loaded(self) -> _Llama:
        if self._llama is None:
            raise TierUnavailable(self._stopped_message())
        return self._llama

    # -- requests ------------------------------------------------------------------------------
    async def generate(self, prompt: list[int], params: SamplingParams, n: int = 1):
        """Yield Piece and Finished events tagged with the choice index until all n choices have finished.

        Raises InvalidRequest / ContextLengthExceeded (400) for what cannot be generated, QueueFull (503)
        when max_queue requests wait already, TierUnavailable (503) once the engine has stopped, and
        RunnerFailed (502) if the engine breaks mid-answer. Closing the generator cancels all n choices.
        """
        sampling.check(params, n, self.options.max_batch)
        if not prompt:
            raise InvalidRequest("the prompt is empty", param="messages")
        if len(prompt) >= self.options.n_ctx:
            raise ContextLengthExceeded(f"the prompt has {len(prompt)} tokens; this tier's context is "
                                        f"{self.options.n_ctx} per request", param="messages")
        request = Request(prompt, params, n, asyncio.get_running_loop())
        scheduler = self.scheduler
        with scheduler.lock:
            if not scheduler.accepting:
                raise TierUnavailable(self._stopped_message())
            if scheduler.queued_after(n) > self.options.max_queue:
                raise QueueFull(self.options.max_queue)
            scheduler.waiting.append(request)
            scheduler.lock.notify_all()
        remaining = n
        try:
            while remaining:
                event = await request.inbox.get()
                if isinstance(event, Exception):
                    raise event
                if isinstance(event, Finished):
                    remaining -= 1
                yield event
        finally:
            if remaining:
                with scheduler.lock:
                    request.cancelled = True
                    scheduler.lock.notify_all()


class _Llama:
    """llama.cpp's handles for one model: opened and freed on the engine thread."""

    def __init__(self, model_path: Path, options: EngineOptions):
        import llama_cpp as ll

        logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)  # llama.cpp's load chatter
        self.ll = ll
        ll.llama_backend_init()
        mparams = ll.llama_model_default_params()
        mparams.use_extra_bufts = options.repack  # runners/llama/layout.py decides it
        self.model = ll.llama_model_load_from_file(str(model_path).encode(), mparams)
        if not self.model:
            raise ConfigError(f"llama.cpp could not load {model_path}; is it a valid GGUF file?")
        self.vocab = ll.llama_model_get_vocab(self.model)
        self.n_vocab = ll.llama_vocab_n_tokens(self.vocab)
        cparams = ll.llama_context_default_params()
        cparams.n_ctx = options.kv_cells
        cparams.n_batch = cparams.n_ubatch = options.n_batch
        cparams.n_seq_max = options.max_batch
        cparams.kv_unified = options.kv_unified
        cparams.n_threads = cparams.n_threads_batch = options.threads
        cparams.no_perf = True
        self.ctx = ll.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            ll.llama_model_free(self.model)
            raise ConfigError(f"llama.cpp could not create a context of {cparams.n_ctx} tokens; lower n_ctx or "
                              "max_batch in the profile")
        self.mem = ll.llama_get_memory(self.ctx)
        self.batch = ll.llama_batch_init(options.n_batch, 0, 1)
        self._token = np.ctypeslib.as_array(self.batch.token, shape=(options.n_batch,))
        self._pos = np.ctypeslib.as_array(self.batch.pos, shape=(options.n_batch,))
        self._logits = np.ctypeslib.as_array(self.batch.logits, shape=(options.n_batch,))
        for i in range(options.n_batch):
            self.batch.n_seq_id[i] = 1
        self._pieces: dict[int, bytes] = {}
        raw = ll.llama_model_chat_template(self.model, None)
        self.chat_template = raw.decode("utf-8") if raw else None
        self.bos = self._text(ll.llama_vocab_bos(self.vocab))
        self.eos = self._text(ll.llama_vocab_eos(self.vocab))

    def fill(self, plan) -> list:
        """Write a step's tokens into the batch; returns (sequence, row) for each token that wants logits."""
        n, rows = 0, []
        seq_id = self.batch.seq_id
        for seq, start, count in plan:
            end = start + count
            self._token[n:n + count] = seq.tokens[start:end]
            self._pos[n:n + count] = np.arange(start, end)
            self._logits[n:n + count] = 0
            for i in range(n, n + count):
                seq_id[i][0] = seq.slot
            if end == len(seq.tokens):  # the sequence's last token: its logits pick the next one
                self._logits[n + count - 1] = 1
                rows.append((seq, n + count - 1))
            n += count
        self.batch.n_tokens = n
        return rows

    def logits(self, row: int) -> np.ndarray:
        """The logits of one batch row, as a writable view on llama.cpp's buffer."""
        return np.ctypeslib.as_array(self.ll.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))

    def piece(self, token: int) -> bytes:
        raw = self._pieces.get(token)
        if raw is None:
            buf = ctypes.create_string_buffer(64)
            n = self.ll.llama_token_to_piece(self.vocab, token, buf, 64, 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self.ll.llama_token_to_piece(self.vocab, token, buf, -n, 0, False)
            raw = self._pieces[token] = buf.raw[:n]
        return raw

    def _text(self, token: int) -> str:
        return self.ll.llama_vocab_get_text(self.vocab, token).decode("utf-8", "replace")

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        ll, data = self.ll, text.encode("utf-8")
        capacity = len(data) + 8
        buf = (ll.llama_token * capacity)()
        n = ll.llama_tokenize(self.vocab, data, len(data), buf, capacity, add_special, parse_special)
        if n < 0:
            buf = (ll.llama_token * -n)()
            n = ll.llama_tokenize(self.vocab, data, len(data), buf, -n, add_special, parse_special)
        return list(buf[:n])

    def free(self) -> None:
        ll = self.ll
        ll.llama_batch_free(self.batch)
        ll.llama_free(self.ctx)
        ll.llama_model_free(self.model)
