"""What the engine takes and gives: its options, one request's sampling settings, the events it yields, and the
scheduler's requests and sequences."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hardware.errors import ConfigError
from runners.errors import Overloaded
from runners.llama import layout

if TYPE_CHECKING:
    from runners.llama.text import TextOut


@dataclass(frozen=True)
class EngineOptions:
    threads: int
    n_ctx: int  # per sequence
    max_batch: int  # sequences decoded together (one KV slot each; a request with n choices takes n)
    n_batch: int  # tokens per decode step, prefill chunks included
    max_queue: int  # requests waiting for slots before new ones are refused
    kv_unified: bool = True  # one KV buffer for all sequences (fastest); False: one per sequence, batch-invariant
    # KV cells shared by all sequences. None: n_ctx x max_batch, so the cache can never fill. Smaller
    # oversubscribes memory (most requests are short); when it fills, sequences wait and are recomputed.
    kv_size: int | None = None
    prompt_cache_mib: int = 256  # host memory for the KV of prefixes no slot holds any more (prompt_cache.py); 0: off
    # weights in llama.cpp's extra buffer types (AMX, repacked AVX); False: as in the GGUF. Decided where the options
    # are made, not on the engine thread (layout.py says why)
    repack: bool = field(default_factory=lambda: layout.repacks(None))

    def __post_init__(self) -> None:
        if self.kv_size is not None:
            if not self.kv_unified:
                raise ConfigError("kv_size needs kv_unified: true (with one KV buffer per sequence, each has n_ctx cells)")
            if self.kv_size < self.n_ctx:
                raise ConfigError(f"kv_size {self.kv_size} is smaller than n_ctx {self.n_ctx}: one request could never "
                                  "fit; raise kv_size or lower n_ctx")

    @property
    def kv_cells(self) -> int:
        return self.kv_size or self.n_ctx * self.max_batch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None  # choice i of n samples with seed + i
    max_tokens: int = 256
    min_tokens: int = 0  # end of turn (and stop strings) held off until this many tokens are out, as vLLM does
    stop: tuple[str, ...] = ()
    grammar: str | None = None  # GBNF, root rule "root"
    grammar_lazy: bool = False  # the grammar applies only from the first match of a trigger on
    grammar_triggers: tuple[str, ...] = ()  # regexes (ECMAScript); the grammar sees the text from the match
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
    """New text of choice `index`; with logprobs, `tokens` are exactly the tokens of `text`."""

    index: int
    text: str
    tokens: list[TokenInfo]


@dataclass
class Finished:
    """Choice `index` ended: "stop" (end of turn, a stop string, a finished grammar) or "length"."""

    index: int
    reason: str
    prompt_tokens: int  # the same for every choice: the prompt is computed once
    completion_tokens: int


class QueueFull(Overloaded):
    def __init__(self, limit: int):
        super().__init__(f"Tier 3 has {limit} requests waiting already; retry shortly or raise max_queue in the profile")


class Inbox:
    """One request's events, put by the engine's wake-up on the caller's event loop and read there. asyncio.Queue
    does the same with more steps per token (its loop check, a deque of getters, task accounting)."""

    __slots__ = ("_events", "_waiter")

    def __init__(self) -> None:
        self._events: deque = deque()
        self._waiter: asyncio.Future | None = None

    def put(self, event: object) -> None:
        self._events.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> object:
        while not self._events:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._events.popleft()


@dataclass(eq=False)
class Request:
    """One generate() call: n choices of one prompt, answered on the caller's event loop."""

    prompt: list[int]
    params: SamplingParams
    n: int
    loop: asyncio.AbstractEventLoop
    inbox: Inbox = field(default_factory=Inbox)
    cancelled: bool = False
    failed: bool = False


@dataclass(eq=False)
class Sequence:
    request: Request
    index: int
    tokens: list[int]  # the prompt, then each generated token; KV holds tokens[:n_cached]
    out: TextOut
    sampler: int
    slot: int
    order: int  # admission order: the youngest is preempted first
    n_cached: int = 0
    n_generated: int = 0
    followers: list[Sequence] = field(default_factory=list)  # choices waiting for this one's prompt KV
    following: bool = False
    preempted: bool = False  # its KV was dropped to make room; it resumes from a shared prefix if one is left
