"""Text out of one sequence: bytes to text, stop strings, and logprobs that line up with the text.

Tokens are bytes, not characters: a character may span tokens, so bytes go through an incremental UTF-8
decoder that is flushed when the turn ends. Text that might be the start of a stop string is held back,
and text is released only at token boundaries, so each piece's token list is exactly its text.
"""

from __future__ import annotations

import codecs
import math
from bisect import bisect_right
from collections.abc import Callable

import numpy as np

from runners.llama.types import TokenInfo


class TextOut:
    def __init__(self, stops: tuple[str, ...], logprobs: bool):
        self.stops = stops
        self.logprobs = logprobs
        self.text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._ends: list[int] = []  # len(text) after each token
        self._infos: list[TokenInfo] = []
        self._sent_tokens = 0
        self._sent_chars = 0
        self._stop_from = 0  # stops are looked for from here on (min_tokens moves it)
        self._searched = 0
        self._longest_stop = max((len(s) for s in stops), default=0)

    def add(self, raw: bytes, info: TokenInfo | None) -> None:
        self.text += self._decoder.decode(raw)
        self._ends.append(len(self.text))
        if info is not None:
            self._infos.append(info)

    def ignore_stops_so_far(self) -> None:
        """Stop strings count only once min_tokens are out, as in vLLM."""
        self._stop_from = self._searched = len(self.text)

    def find_stop(self) -> int | None:
        """Where the first stop string begins in the text not searched yet (with overlap), if any."""
        if not self.stops:
            return None
        start = max(self._stop_from, self._searched - self._longest_stop + 1)
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        self._searched = len(self.text)
        return min(found) if found else None

    def ready(self) -> tuple[str, list[TokenInfo]] | None:
        """Text (and its tokens) that can go out now: whole tokens, none that may begin a stop string."""
        safe = len(self.text) - _holdback(self.text, self.stops)
        n = bisect_right(self._ends, safe, lo=self._sent_tokens)
        if n == self._sent_tokens:
            return None
        return self._release(n, self._ends[n - 1])

    def finish(self, cut: int | None) -> tuple[str, list[TokenInfo]]:
        """The rest at the end of the turn. `cut`: where a stop string began (the text ends there)."""
        if cut is None:
            tail = self._decoder.decode(b"", final=True)  # a character cut short shows as U+FFFD
            if tail and self._ends:
                self.text += tail
                self._ends[-1] = len(self.text)
            return self._release(len(self._ends), len(self.text))
        cut = max(cut, self._sent_chars)
        self.text = self.text[:cut]
        n = bisect_right(self._ends, cut, lo=self._sent_tokens)  # tokens wholly before the cut
        if n < len(self._ends) and self.logprobs:  # the token the stop string begins in keeps its part before it
            start = self._ends[n - 1] if n else 0
            if start < cut and n < len(self._infos):
                part = self.text[start:cut]
                kept = self._infos[n]
                self._infos[n] = TokenInfo(part, part.encode("utf-8"), kept.logprob, kept.top)
                self._ends[n] = cut
                n += 1
        return self._release(n, cut)

    def _release(self, n_tokens: int, end: int) -> tuple[str, list[TokenInfo]]:
        text = self.text[self._sent_chars:end]
        infos = self._infos[self._sent_tokens:n_tokens] if self.logprobs else []
        self._sent_tokens, self._sent_chars = n_tokens, end
        return text, infos


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might be the start of a stop string, so are not sent yet."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


# -- logprob maths ------------------------------------------------------------------------------
def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = float(logits.max())
    return logits - (top + math.log(float(np.exp(logits - top).sum())))


def token_info(token: int, raw: bytes, log_probs: np.ndarray, top_n: int,
               piece: Callable[[int], bytes]) -> TokenInfo:
    """The chosen token's logprob and the top_n most likely tokens at that step (the model's distribution,
    before grammar or min_tokens masks)."""
    top: list[tuple[str, bytes, float]] = []
    if top_n:
        best = np.argpartition(-log_probs, top_n)[:top_n]
        for candidate in sorted(best, key=lambda t: -log_probs[t]):
            raw_top = piece(int(candidate))
            top.append((raw_top.decode("utf-8", "replace"), raw_top, float(log_probs[candidate])))
    return TokenInfo(raw.decode("utf-8", "replace"), raw, float(log_probs[token]), top)
