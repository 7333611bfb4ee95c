"""Nearest-neighbour search over unit vectors: exact numpy below a size, faiss HNSW above it."""

from __future__ import annotations

import numpy as np

# Where HNSW starts to beat exact search on a 2-core CPU (384-d MiniLM vectors; docs/benchmarks.md).
ANN_MIN = 20_000


class VectorIndex:
    """Inner-product search. Removals are tombstones for HNSW, rebuilt once they are a fifth of it."""

    def __init__(self, dim: int, ann_min: int = ANN_MIN, hnsw_m: int = 32):
        self.dim, self.ann_min, self.hnsw_m = dim, ann_min, hnsw_m
        self._vectors: dict[int, np.ndarray] = {}
        self._matrix: np.ndarray | None = None  # exact mode, rebuilt lazily after changes
        self._keys: list[int] = []
        self._hnsw = None
        self._hnsw_keys: list[int] = []
        self._tombstones: set[int] = set()

    def __len__(self) -> int:
        return len(self._vectors)

    def add(self, key: int, vector: np.ndarray) -> None:
        self._vectors[key] = np.asarray(vector, dtype=np.float32)
        self._matrix = None
        if self._hnsw is not None:
            self._hnsw.add(self._vectors[key][None, :])
            self._hnsw_keys.append(key)
        elif len(self._vectors) >= self.ann_min:
            self._build_hnsw()

    def remove(self, key: int) -> None:
        if self._vectors.pop(key, None) is None:
            return
        self._matrix = None
        if self._hnsw is not None:
            self._tombstones.add(key)
            if len(self._tombstones) * 5 > len(self._hnsw_keys):
                self._build_hnsw() if len(self._vectors) >= self.ann_min else self._drop_hnsw()

    def search(self, vector: np.ndarray) -> tuple[int, float] | None:
        """The best match and its cosine similarity, or None when empty."""
        if not self._vectors:
            return None
        query = np.asarray(vector, dtype=np.float32)
        if self._hnsw is None:
            if self._matrix is None:
                self._keys = list(self._vectors)
                self._matrix = np.stack([self._vectors[k] for k in self._keys])
            scores = self._matrix @ query
            best = int(np.argmax(scores))
            return self._keys[best], float(scores[best])
        k = min(len(self._hnsw_keys), len(self._tombstones) + 1, 64)  # past 63 dead neighbours: a (safe) miss
        scores, positions = self._hnsw.search(query[None, :], k)
        for score, position in zip(scores[0], positions[0]):
            key = self._hnsw_keys[position] if position >= 0 else None
            if key is not None and key not in self._tombstones and key in self._vectors:
                return key, float(score)
        return None

    def _build_hnsw(self) -> None:
        import faiss

        index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = 64
        self._hnsw_keys = list(self._vectors)
        index.add(np.stack([self._vectors[k] for k in self._hnsw_keys]))
        self._hnsw, self._tombstones = index, set()

    def _drop_hnsw(self) -> None:
        self._hnsw, self._hnsw_keys, self._tombstones = None, [], set()
