"""Host-memory prompt cache: the KV of prefixes no slot holds any more, kept in RAM and restored on a match.

A slot keeps its last prompt's KV (slots.py), but once the slot is given to a prompt that starts differently
that prefix is gone, so with more distinct prompts than slots (features' system prompts, conversations that
come back) each returns to a full prefill. Native llama-server keeps such states in host memory
(`--cache-ram`, 8 GiB by default): at one slot it restored every repeated prompt with one token left to
decode, where this engine prefilled 14-18 (docs/benchmarks.md). This does the same within a byte budget,
least recently used out first. Engine thread only: it reads and writes llama.cpp's KV through its state API.
"""

from __future__ import annotations

import ctypes
from array import array
from collections import OrderedDict
from dataclasses import dataclass

MIN_TOKENS = 8  # shorter prefixes cost less to prefill than to save and restore


@dataclass
class Saved:
    key: bytes  # the prefix's tokens (positions 0..n-1) as 32-bit integers
    state: ctypes.Array  # llama_state_seq_get_data's bytes for the sequence holding it

    @property
    def n(self) -> int:
        return len(self.key) // 4


def _key(tokens: list[int]) -> bytes:
    return array("i", tokens).tobytes()


def _common(a: bytes, b: bytes, limit: int) -> int:
    """How many leading tokens two keys share, at most `limit`: a binary search of byte comparisons, so a
    long shared system prompt costs microseconds per entry, not a Python loop over its tokens."""
    low, high = 0, min(len(a), len(b), limit * 4) // 4
    while low < high:
        mid = (low + high + 1) // 2
        if a[: mid * 4] == b[: mid * 4]:
            low = mid
        else:
            high = mid - 1
    return low


class PromptCache:
    def __init__(self, ll, ctx, mem, budget_bytes: int):
        self._ll, self._ctx, self._mem = ll, ctx, mem
        self.budget = budget_bytes
        self.bytes = 0
        self.restored = 0  # prefixes restored (engine stats, and its closing log line)
        self.refused = 0  # restores the KV cache had no room for
        self._entries: OrderedDict[bytes, Saved] = OrderedDict()  # by prefix, oldest use first

    def match(self, tokens: list[int], limit: int) -> tuple[Saved | None, int]:
        """The saved prefix sharing the most of tokens[:limit], and how many tokens it shares."""
        best, shared, key = None, 0, _key(tokens[:limit])
        for saved in self._entries.values():
            if (n := _common(saved.key, key, limit)) > shared:
                best, shared = saved, n
        return best, shared

    def save(self, slot: int, tokens: list[int], n: int) -> None:
        """Keep what `slot` holds (tokens[:n]) before it is cut, unless a saved prefix already covers it."""
        if n < MIN_TOKENS or self.budget == 0:
            return
        prefix = _key(tokens[:n])
        for key, saved in self._entries.items():
            if saved.n >= n and _common(saved.key, prefix, n) == n:
                self._entries.move_to_end(key)
                return
        size = self._ll.llama_state_seq_get_size(self._ctx, slot)
        if size == 0 or size > self.budget:
            return
        state = (ctypes.c_uint8 * size)()
        if self._ll.llama_state_seq_get_data(self._ctx, state, size, slot) != size:
            return
        for key in [k for k, s in self._entries.items() if _common(s.key, prefix, n) == s.n]:
            self._forget(key)  # shorter prefixes of this one: it serves them all
        self._entries[prefix] = Saved(prefix, state)
        self.bytes += size
        while self.bytes > self.budget:
            self._forget(next(iter(self._entries)))

    def restore(self, saved: Saved, slot: int) -> bool:
        """Load `saved` into the emptied `slot`; False (the slot left empty) when the KV cache has no room."""
        ll = self._ll
        ll.llama_memory_seq_rm(self._mem, slot, -1, -1)
        if ll.llama_state_seq_set_data(self._ctx, saved.state, len(saved.state), slot) == 0:
            ll.llama_memory_seq_rm(self._mem, slot, -1, -1)
            self.refused += 1
            return False
        self._entries.move_to_end(saved.key)
        self.restored += 1
        return True

    def _forget(self, key: bytes) -> None:
        self.bytes -= len(self._entries.pop(key).state)
