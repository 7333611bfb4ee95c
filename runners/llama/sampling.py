"""Sampler chains and grammars: what picks each sequence's next token.

`check` runs on the caller's side and never touches llama.cpp, so a bad request is refused before it
queues; everything that builds or frees a llama.cpp sampler runs on the engine thread (the `Samplers`
methods). Trigger patterns are checked here because llama.cpp compiles them with std::regex, whose
exception for a pattern it cannot parse would cross ctypes and end the process.
"""

from __future__ import annotations

import ctypes
import random
import re

from runners.errors import InvalidRequest
from runners.llama.types import SamplingParams

_DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp reads this seed as "pick one at random"


def check(params: SamplingParams, n: int, max_batch: int) -> None:
    """Refuse what llama.cpp cannot do with these settings, naming the field."""
    if not 1 <= n <= max_batch:
        raise InvalidRequest(f"n must be between 1 and {max_batch} on this tier (max_batch in the profile)", param="n")
    if params.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
    if not 0 <= params.min_tokens <= params.max_tokens:
        raise InvalidRequest("min_tokens must be between 0 and max_tokens", param="min_tokens")
    if params.min_tokens and params.grammar is not None:
        raise InvalidRequest("min_tokens cannot be combined with a grammar or response_format on this tier: the "
                             "grammar decides where the output ends", param="min_tokens")
    if any(not s for s in params.stop):
        raise InvalidRequest("stop strings must not be empty", param="stop")
    if params.grammar_lazy or params.grammar_triggers:
        if params.grammar is None:
            raise InvalidRequest("a lazy grammar needs the grammar itself", param="grammar")
        if not params.grammar_lazy:
            raise InvalidRequest("grammar_triggers only apply with grammar_lazy: true", param="grammar_lazy")
        if not params.grammar_triggers:
            raise InvalidRequest("grammar_lazy needs at least one trigger pattern", param="grammar_triggers")
        for pattern in params.grammar_triggers:
            _check_trigger(pattern)


_GROUP_KINDS = {":", "=", "!"}  # (?:  (?=  (?!  : all ECMAScript has


def _check_trigger(pattern: str) -> None:
    """A pattern both Python's re and ECMAScript (std::regex) read the same way, or a clear 400."""
    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest(f"grammar trigger {pattern!r}: {why}", param="grammar_triggers")

    try:
        re.compile(pattern)
    except re.error as exc:
        raise refuse(f"not a valid regular expression ({exc})") from None
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if pattern[i + 1: i + 2] in ("A", "Z", "z", "G"):
                raise refuse(f"\\{pattern[i + 1]} is not ECMAScript; use ^ and $")
            i += 2
            continue
        if in_class:
            if not c.isascii():  # std::regex reads bytes, and a signed char can turn a range inside out
                raise refuse("non-ASCII characters inside [...] are not supported; use alternatives, e.g. (é|è)")
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if pattern[i + 1: i + 2] == "]":
                i += 1
        elif c == "(" and pattern[i + 1: i + 2] == "?" and pattern[i + 2: i + 3] not in _GROUP_KINDS:
            raise refuse("only (?:...), (?=...) and (?!...) groups are supported (no lookbehind, names or flags)")
        elif c == "{":
            quantifier = re.match(r"\{\d+(,\d*)?\}", pattern[i:])
            if quantifier is None or i == 0 or pattern[i - 1] in "(|":
                raise refuse("a literal { must be escaped as \\{")
            i += len(quantifier.group())
            continue
        elif c == "}":
            raise refuse("a literal } must be escaped as \\}")
        i += 1


class Samplers:
    """Builds and frees sampler chains; engine thread only (the vocab and llama.cpp's heap belong to it)."""

    def __init__(self, ll, vocab, n_vocab: int):
        self._ll, self._vocab = ll, vocab
        # end-of-generation tokens, masked in the logits while a sequence is short of min_tokens
        self.eog = [t for t in range(n_vocab) if ll.llama_vocab_is_eog(vocab, t)]

    def build(self, params: SamplingParams, choice: int) -> int:
        """grammar -> (greedy | top_p -> temperature -> dist). Choice i samples with seed + i."""
        ll = self._ll
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        if params.grammar is not None:
            grammar = self._grammar(params)
            if not grammar:
                ll.llama_sampler_free(chain)
                raise InvalidRequest("the response format could not be turned into a grammar", param="response_format")
            ll.llama_sampler_chain_add(chain, grammar)
        if params.temperature == 0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        else:
            seed = (params.seed + choice) & 0xFFFFFFFF if params.seed is not None else random.getrandbits(32)
            if params.top_p < 1:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(params.top_p, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(params.temperature))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed if seed != _DEFAULT_SEED else seed - 1))
        return chain

    def _grammar(self, params: SamplingParams) -> int:
        ll, text = self._ll, params.grammar.encode()
        if not params.grammar_lazy:
            return ll.llama_sampler_init_grammar(self._vocab, text, b"root")
        patterns = (ctypes.c_char_p * len(params.grammar_triggers))(*(p.encode() for p in params.grammar_triggers))
        return ll.llama_sampler_init_grammar_lazy_patterns(self._vocab, text, b"root", patterns, len(patterns), None, 0)

    def free(self, chain: int) -> None:
        self._ll.llama_sampler_free(chain)
