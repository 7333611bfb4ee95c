"""KV slots: one llama.cpp sequence id per running sequence, and the prefix each slot's cache still holds.

A slot keeps its KV after its sequence ends, so a later prompt that starts the same (a chat's system
prompt, the previous turn and its answer) skips that prefill. With the unified KV cache a prefix held by
any slot is shared into another by tagging the same cells with both ids (no copy, no compute), and one
that no slot holds any more may still be in the host-memory prompt cache (prompt_cache.py).
With the unified cache and the prompt cache on, a sequence that starts also moves every idle slot's KV to
host memory, as native llama-server does (`--cache-idle-slots`): each decode step attends over the cells
in use, so the leftovers of 16 earlier clients slowed one client's decoding by a tenth (docs/benchmarks.md).
Engine thread only: every method here calls llama.cpp's memory API.
"""

from __future__ import annotations

from runners.llama.prompt_cache import PromptCache


def common_prefix(held: tuple[list[int], int], tokens: list[int], limit: int) -> int:
    cached, n = held
    count, end = 0, min(n, limit)
    while count < end and cached[count] == tokens[count]:
        count += 1
    return count


class Slots:
    def __init__(self, ll, mem, count: int, unified: bool, cache: PromptCache):
        self._ll, self._mem, self.unified, self.cache = ll, mem, unified, cache
        self.free: list[int] = list(range(count))
        # what each slot's KV holds: (tokens, how many of them), positions 0..n-1; a running sequence's own list
        self._held: list[tuple[list[int], int]] = [([], 0)] * count

    def take(self, tokens: list[int], n: int) -> list[int]:
        """n free slots: first the one whose cache shares the longest prefix with `tokens`, then the least
        useful caches for the others (choices that will be forked from the first)."""
        limit = len(tokens) - 1
        first = max(self.free, key=lambda s: common_prefix(self._held[s], tokens, limit))
        self.free.remove(first)
        others = sorted(self.free, key=lambda s: self._held[s][1])[: n - 1]
        for slot in others:
            self.free.remove(slot)
            self.drop(slot)
        return [first, *others]

    def attach(self, slot: int, tokens: list[int], busy: list[int]) -> int:
        """Keep, share or restore the longest cached prefix of `tokens` (all but the last, which must be decoded
        for its logits) into `slot`; returns how many tokens need no prefill. What the slot held beyond that
        prefix goes to the prompt cache first, so a later prompt that starts like it can have it back."""
        ll, mem = self._ll, self._mem
        limit = len(tokens) - 1
        held = self._held[slot]
        keep = common_prefix(held, tokens, limit)
        donor, shared = -1, 0
        if self.unified:
            donors = [s for s in busy + self.free if s != slot]
            donor = max(donors, key=lambda s: common_prefix(self._held[s], tokens, limit), default=-1)
            shared = common_prefix(self._held[donor], tokens, limit) if donor >= 0 else 0
        if held[1] > keep:  # saved before matching: saving may evict, and a match must be an entry still there
            self.cache.save(slot, *held)
        saved, cached = self.cache.match(tokens, limit)
        if cached > max(keep, shared):
            keep = cached if self.cache.restore(saved, slot) else 0  # a failed restore leaves the slot empty
        if shared > keep:
            ll.llama_memory_seq_rm(mem, slot, -1, -1)
            ll.llama_memory_seq_cp(mem, donor, slot, 0, shared)
            keep = shared
        if not ll.llama_memory_seq_rm(mem, slot, keep, -1):  # a cache that cannot drop a tail starts over
            ll.llama_memory_seq_rm(mem, slot, -1, -1)
            keep = 0
        self._held[slot] = (tokens, keep)
        if self.unified and self.cache.budget:
            self._clear_idle()
        return keep

    def _clear_idle(self) -> None:
        """Idle slots' KV to the prompt cache, then out of the KV cache (after `attach` shared what it needed)."""
        for idle in self.free:
            if self._held[idle][1]:
                self.cache.save(idle, *self._held[idle])
                self.drop(idle)

    def hold(self, slot: int, tokens: list[int], n: int) -> None:
        """The slot's KV now holds tokens[:n] (after a decode step)."""
        self._held[slot] = (tokens, n)

    def fork(self, source: int, target: int, tokens: list[int], n: int) -> None:
        """Give `target` the KV of `source` (its prompt, just computed): choices 2..n of one request.
        Unified: the same cells get both ids. One buffer per sequence: llama.cpp copies the whole stream."""
        ll, mem = self._ll, self._mem
        ll.llama_memory_seq_rm(mem, target, -1, -1)
        ll.llama_memory_seq_cp(mem, source, target, -1, -1)
        self._held[target] = (tokens, n)

    def release(self, slot: int, tokens: list[int], n: int) -> None:
        """The sequence ended: its KV stays as a prefix for later prompts."""
        self._held[slot] = (tokens, n)
        self.free.append(slot)

    def drop(self, slot: int) -> None:
        """Forget everything the slot holds (a preempted sequence, a slot about to be forked into)."""
        self._ll.llama_memory_seq_rm(self._mem, slot, -1, -1)
        self._held[slot] = ([], 0)

    def evict_free(self) -> int:
        """Drop the caches of free slots to make room in a full KV cache; returns how many were dropped."""
        dropped = [s for s in self.free if self._held[s][1]]
        for slot in dropped:
            self.drop(slot)
        return len(dropped)
