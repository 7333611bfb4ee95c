"""The engine thread's loop: a FIFO of requests, their sequences in KV slots, one llama_decode per step.

Each step decodes one token for every running sequence and fills the rest of the batch with prompt
chunks of new arrivals, so a long prompt never stalls running streams. A request with n choices
prefills its prompt once; the other n-1 sequences fork that KV and sample from the same logits. When
llama_decode finds no room in the KV cache (status 1, only when `kv_size` oversubscribes it) the step
is retried smaller: free slots' caches go first, then prompt chunks wait, then the youngest sequence is
preempted and later recomputed from its tokens. Events go back to each caller's event loop once a step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from runners.llama.text import TextOut, log_softmax, token_info
from runners.llama.types import Finished, Inbox, Piece, Request, Sequence


class Scheduler:
    def __init__(self, options):
        self.options = options
        self.lock = threading.Condition()
        self.waiting: deque[Request] = deque()
        self.free_count = options.max_batch  # slots not taken by an admitted request (lock held)
        self.accepting = False
        self.stopping = False
        self.active: list[Sequence] = []  # engine thread only
        self._starting: list[Request] = []  # admitted, not yet given slots
        self._admitted = 0
        self._outbox: list[tuple[Request, object]] = []
        self.stats = {"steps": 0, "decode_s": 0.0, "step_s": 0.0, "tokens": 0, "reused": 0, "kv_full": 0,
                      "preempted": 0}

    def attach(self, llama, samplers, slots) -> None:
        """The llama.cpp handles, once the engine thread has opened them."""
        self.llama, self.samplers, self.slots = llama, samplers, slots
        self._eog = set(samplers.eog)
        self._eog_index = np.array(samplers.eog, dtype=np.int64)

    # -- called from the callers' threads (lock held by the caller of these) --------------------------
    def queued_after(self, n: int) -> int:
        """How many requests would wait for slots if one needing n were added now (FIFO)."""
        free, blocked = self.free_count, 0
        for request in self.waiting:
            if blocked or request.n > free:
                blocked += 1
            else:
                free -= request.n
        return blocked + (1 if blocked or n > free else 0)

    # -- the loop (engine thread) ---------------------------------------------------------------
    def run(self) -> None:
        while True:
            with self.lock:
                while True:
                    if self.stopping:
                        return
                    self._drop_cancelled()
                    self._starting = self._pop_admissible()
                    if self._starting or self._runnable():
                        break
                    self.lock.wait()
            for request in self._starting:
                self._start(request)
            self._starting = []
            if self._runnable():
                self._step()
            self._flush()

    def fail_everyone(self, error: Callable[[], Exception]) -> None:
        """The loop has ended (shutdown or a fault): every request still here gets an error (lock held)."""
        for seq in list(self.active):
            self._release(seq)
            self._fail(seq.request, error())
        for request in [*self._starting, *self.waiting]:
            self._fail(request, error())
        self.waiting.clear()
        self._flush()

    def _runnable(self) -> bool:
        return any(not seq.following for seq in self.active)

    def _pop_admissible(self) -> list[Request]:
        admitted = []
        while self.waiting and self.waiting[0].n <= self.free_count:
            request = self.waiting.popleft()
            self.free_count -= request.n
            admitted.append(request)
        return admitted

    def _start(self, request: Request) -> None:
        """Samplers (grammar parsing included) and slots for each choice; the first one prefills."""
        params, samplers = request.params, []
        try:
            for i in range(request.n):
                samplers.append(self.samplers.build(params, i))
        except Exception as exc:
            for chain in samplers:
                self.samplers.free(chain)
            with self.lock:
                self.free_count += request.n
            self._fail(request, exc)
            return
        slots = self.slots.take(request.prompt, request.n)
        seqs = []
        for i, (chain, slot) in enumerate(zip(samplers, slots)):
            self._admitted += 1
            tokens = list(request.prompt)
            seqs.append(Sequence(request, i, tokens, TextOut(params.stop, params.logprobs), chain, slot,
                                 self._admitted, following=i > 0))
        leader = seqs[0]
        leader.followers = seqs[1:]
        leader.n_cached = self.slots.attach(leader.slot, leader.tokens, [s.slot for s in self.active])
        self.stats["reused"] += leader.n_cached
        self.active.extend(seqs)

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.active if s.request.cancelled]:
            self._release(seq)
        for request in [r for r in self.waiting if r.cancelled]:
            self.waiting.remove(request)

    def _release(self, seq: Sequence) -> None:
        """Free the sequence's sampler and slot; its KV stays in the slot as a reusable prefix."""
        self.active.remove(seq)
        self.slots.release(seq.slot, seq.tokens, seq.n_cached)
        self.samplers.free(seq.sampler)
        with self.lock:
            self.free_count += 1

    # -- one step -------------------------------------------------------------------------------
    def _plan(self) -> list[tuple[Sequence, int, int]]:
        """(sequence, first token, count): one token for each decoding sequence, then prompt chunks."""
        decoding, prefilling = [], []
        for seq in self.active:
            if seq.following or seq.n_cached == len(seq.tokens):  # waiting for a prompt, or cancelled unsampled
                continue
            if seq.preempted:
                seq.preempted = False
                seq.n_cached = self.slots.attach(seq.slot, seq.tokens, [s.slot for s in self.active if s is not seq])
            (decoding if len(seq.tokens) - seq.n_cached == 1 else prefilling).append(seq)
        plan = [(seq, seq.n_cached, 1) for seq in decoding]
        budget = self.options.n_batch - len(plan)
        for seq in sorted(prefilling, key=lambda s: s.order):
            if budget <= 0:
                break
            take = min(len(seq.tokens) - seq.n_cached, budget)
            plan.append((seq, seq.n_cached, take))
            budget -= take
        return plan

    def _step(self) -> None:
        ll, llama = self.llama.ll, self.llama
        t0 = time.perf_counter()
        plan = self._plan()
        while plan:
            rows = llama.fill(plan)
            t1 = time.perf_counter()
            status = ll.llama_decode(llama.ctx, llama.batch)
            t2 = time.perf_counter()
            if status == 0:
                break
            if status != 1:
                raise RuntimeError(f"llama_decode returned {status}")
            self.stats["kv_full"] += 1
            plan = self._make_room(plan)
        if not plan:
            return
        stats = self.stats
        stats["steps"] += 1
        stats["tokens"] += sum(count for _, _, count in plan)
        stats["decode_s"] += t2 - t1
        for seq, start, count in plan:
            seq.n_cached = start + count
            self.slots.hold(seq.slot, seq.tokens, seq.n_cached)
        row_logprobs: dict[int, np.ndarray] = {}
        for seq, row in rows:
            if seq.request.cancelled:
                continue
            group = [seq]
            if seq.followers and seq.n_generated == 0:  # the prompt is in: choices 2..n start from its KV
                for follower in seq.followers:
                    self.slots.fork(seq.slot, follower.slot, follower.tokens, seq.n_cached)
                    follower.n_cached, follower.following = seq.n_cached, False
                group += seq.followers
                seq.followers = []
            for member in group:
                if member in self.active:
                    self._sample(member, row, row_logprobs)
        stats["step_s"] += time.perf_counter() - t0

    def _make_room(self, plan: list[tuple[Sequence, int, int]]) -> list[tuple[Sequence, int, int]]:
        """The KV cache is full: free what can be freed, smallest loss first, and return the step to retry."""
        if self.slots.evict_free():
            return plan
        decoding = [entry for entry in plan if entry[2] == 1 and entry[0].n_generated > 0]
        prefill = [entry for entry in plan if entry not in decoding]
        if prefill and decoding:
            return decoding  # prompt chunks wait until sequences end
        if len(prefill) > 1:
            return prefill[:1]  # the oldest prompt alone
        if prefill and prefill[0][2] > 1:
            seq, start, count = prefill[0]
            return [(seq, start, count // 2)]
        holders = sorted((s for s in self.active if s.n_cached > 0), key=lambda s: s.order)
        if not holders:
            raise RuntimeError("the KV cache is full with no sequence in it; raise kv_size in the profile")
        victim = holders[-1]  # preempted: recomputed from its tokens when there is room
        self.slots.drop(victim.slot)
        victim.n_cached, victim.preempted = 0, True
        self.stats["preempted"] += 1
        return [entry for entry in plan if entry[0] is not victim]

    def _sample(self, seq: Sequence, row: int, row_logprobs: dict[int, np.ndarray]) -> None:
        llama, params = self.llama, seq.request.params
        info_logprobs = None
        if params.logprobs or seq.n_generated < params.min_tokens:
            logits = llama.logits(row)
            if params.logprobs:
                if row not in row_logprobs:  # choices forked from one prompt share its first row
                    row_logprobs[row] = log_softmax(logits)
                info_logprobs = row_logprobs[row]
            if seq.n_generated < params.min_tokens:
                logits[self._eog_index] = -np.inf
        token = llama.ll.llama_sampler_sample(seq.sampler, llama.ctx, row)
        seq.tokens.append(token)
        seq.n_generated += 1
        if token in self._eog:
            return self._complete(seq, "stop", None)
        raw = llama.piece(token)
        info = None if info_logprobs is None else token_info(token, raw, info_logprobs, params.top_logprobs, llama.piece)
        seq.out.add(raw, info)
        if seq.n_generated < params.min_tokens:
            seq.out.ignore_stops_so_far()
        elif (cut := seq.out.find_stop()) is not None:
            return self._complete(seq, "stop", cut)
        if seq.n_generated >= params.max_tokens or len(seq.tokens) >= self.options.n_ctx:
            return self._complete(seq, "length", None)
        ready = seq.out.ready()
        if ready is not None:
            self._outbox.append((seq.request, Piece(seq.index, *ready)))

    def _complete(self, seq: Sequence, reason: str, cut: int | None) -> None:
        text, infos = seq.out.finish(cut)
        if text or infos:
            self._outbox.append((seq.request, Piece(seq.index, text, infos)))
        self._outbox.append((seq.request, Finished(seq.index, reason, len(seq.request.prompt), seq.n_generated)))
        self._release(seq)

    # -- events back to the callers --------------------------------------------------------------
    def _fail(self, request: Request, error: Exception) -> None:
        if not request.failed:
            request.failed = True
            self._outbox.append((request, error))

    def _flush(self) -> None:
        """Deliver this step's events with one wake-up per event loop, not one per token."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Inbox, object]]] = {}
        for request, event in self._outbox:
            by_loop.setdefault(request.loop, []).append((request.inbox, event))
        self._outbox = []
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed (shutdown): nobody is listening
                pass


def _deliver(items: list[tuple[Inbox, object]]) -> None:
    for inbox, event in items:
        inbox.put(event)
