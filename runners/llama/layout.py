"""Which weight layout llama.cpp loads a GGUF in: the Tier 3 engine, the llamacpp cache embedder and the benchmarks
all decide it here.

llama.cpp can lay the weights out again at load for the CPU's extra kernels (AMX tiles, repacked AVX). Its AMX
matrix multiply (llama-cpp-python 0.3.36) died with SIGSEGV on a Sapphire Rapids VM here, in this engine, in the
embedder and in native llama-server alike, on any prompt longer than a few tokens. So by default there is no
extra layout where llama.cpp would use AMX, and the usual one everywhere else.
"""

from __future__ import annotations

import functools
import threading

_asking = threading.Lock()


def repacks(wanted: bool | None) -> bool:
    """Whether llama.cpp uses its extra buffer types: as asked, or by default (None) unless it would use AMX."""
    if wanted is not None:
        return wanted
    with _asking:
        return not _has_amx()


@functools.cache
def _has_amx() -> bool:
    """Asked once, under a lock: llama_print_system_info builds its answer in one static string that every call
    clears first, so two threads asking at once can read each other's half-built text. Two llamacpp tiers
    loading at once did get the AMX layout here, so EngineOptions asks where it is made, not on engine threads."""
    import llama_cpp as ll

    return b"AMX_INT8 = 1" in ll.llama_print_system_info()


@functools.cache
def llama_class() -> type:
    """llama-cpp-python's high-level Llama, loading in the layout `repacks(None)` chooses."""
    from llama_cpp import Llama

    class DefaultLayoutLlama(Llama):
        """Llama takes no layout argument; it sets `model_params` and then loads with them, so a property takes
        them on the way."""

        @property
        def model_params(self):
            return self._layout_params

        @model_params.setter
        def model_params(self, params) -> None:
            params.use_extra_bufts = repacks(None)
            self._layout_params = params

    return DefaultLayoutLlama


def llama(**kwargs):
    """llama-cpp-python's high-level `Llama(**kwargs)`, loaded in the layout `repacks(None)` chooses."""
    return llama_class()(**kwargs)
