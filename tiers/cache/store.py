"""Cache entries, their policy and the two backends: in process (default) and Redis (shared by replicas).

A namespace holds every request whose answer-changing parts match: feature, system prompt and earlier
turns, tier and model, sampling parameters and response_format. Inside it, only the last user message
is compared: first exactly (a hash), then by cosine similarity against the feature's threshold.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from tiers.cache.index import VectorIndex


@dataclass(frozen=True)
class Policy:
    threshold: float
    ttl_s: float
    max_entries: int
    max_bytes: int


@dataclass
class Entry:
    key: int
    namespace: str
    text_hash: str
    answer: str  # the cached ChatCompletion, as JSON
    request_id: str
    expires_at: float
    size: int


@dataclass(frozen=True)
class Hit:
    answer: str
    similarity: float
    request_id: str


def text_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()


def namespace(feature: str, material: dict) -> str:
    return f"{feature}|{hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]}"


class _Space:
    def __init__(self, dim: int, ann_min: int):
        self.index = VectorIndex(dim, ann_min)
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self.exact: dict[str, int] = {}
        self.bytes = 0


class MemoryCache:
    """In-process backend: dictionaries and a vector index per namespace, LRU bounded by entries and bytes."""

    def __init__(self, dim: int, ann_min: int = 20_000):
        self.dim, self.ann_min = dim, ann_min
        self._spaces: dict[str, _Space] = {}
        self._by_request: dict[str, tuple[str, int]] = {}
        self._next = 0
        self._lock = threading.Lock()

    def lookup(self, ns: str, text: str, vector_fn, policy: Policy) -> Hit | None:
        with self._lock:
            space = self._spaces.get(ns)
            if space is None:
                return None
            key = space.exact.get(text_hash(text))
            similarity = 1.0
        if key is None:
            vector = vector_fn()
            with self._lock:
                found = space.index.search(vector)
                if found is None or found[1] < policy.threshold:
                    return None
                key, similarity = found
        with self._lock:
            entry = space.entries.get(key)
            if entry is None:
                return None
            if entry.expires_at <= time.time():
                self._drop(space, entry)
                return None
            space.entries.move_to_end(key)
            return Hit(entry.answer, similarity, entry.request_id)

    def insert(self, ns: str, text: str, vector: np.ndarray, answer: str, request_id: str, policy: Policy) -> None:
        with self._lock:
            space = self._spaces.setdefault(ns, _Space(self.dim, self.ann_min))
            digest = text_hash(text)
            if digest in space.exact:
                self._drop(space, space.entries[space.exact[digest]])
            self._next += 1
            entry = Entry(self._next, ns, digest, answer, request_id, time.time() + policy.ttl_s,
                          len(answer.encode()) + vector.nbytes + len(text.encode()))
            space.entries[entry.key] = entry
            space.exact[digest] = entry.key
            space.index.add(entry.key, vector)
            space.bytes += entry.size
            self._by_request[request_id] = (ns, entry.key)
            while space.entries and (len(space.entries) > policy.max_entries or space.bytes > policy.max_bytes):
                self._drop(space, next(iter(space.entries.values())))

    def invalidate_feature(self, feature: str) -> int:
        with self._lock:
            dropped = 0
            for ns in [n for n in self._spaces if n.split("|", 1)[0] == feature]:
                space = self._spaces.pop(ns)
                dropped += len(space.entries)
                for entry in space.entries.values():
                    self._by_request.pop(entry.request_id, None)
            return dropped

    def invalidate_request(self, request_id: str) -> bool:
        with self._lock:
            found = self._by_request.get(request_id)
            if found is None:
                return False
            space = self._spaces[found[0]]
            self._drop(space, space.entries[found[1]])
            return True

    def stats(self) -> dict:
        with self._lock:
            return {"entries": sum(len(s.entries) for s in self._spaces.values()),
                    "bytes": sum(s.bytes for s in self._spaces.values()), "namespaces": len(self._spaces)}

    def _drop(self, space: _Space, entry: Entry) -> None:
        space.entries.pop(entry.key, None)
        if space.exact.get(entry.text_hash) == entry.key:
            del space.exact[entry.text_hash]
        space.index.remove(entry.key)
        space.bytes -= entry.size
        if self._by_request.get(entry.request_id, (None, None))[1] == entry.key:
            del self._by_request[entry.request_id]
