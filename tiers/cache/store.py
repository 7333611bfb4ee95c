"""Cache entries, their bounds, and the in-process backend (tiers/cache/redis_store.py is the shared one).

A namespace holds every request whose answer-changing parts match: feature, client key (unless the
feature shares its cache), system prompt and earlier turns, tier and model, sampling parameters and
response_format. Inside it, only the last user message is compared: first exactly (a hash), then by
cosine similarity against the feature's threshold.

Bounds: each feature keeps at most its policy's entries and bytes over all its namespaces, and the
whole cache at most the server's `Limits`; the least recently used entry goes first. A namespace
goes with its last entry, and expired entries are swept (`sweep`) whether or not anyone asks again.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from tiers.cache.index import ANN_MIN, VectorIndex

# Served-to request ids remembered for invalidation (in process; Redis keeps them until the entry expires).
SERVED_IDS = 100_000


@dataclass(frozen=True)
class Policy:
    """A feature's bounds: threshold for a hit, lifetime, and entries and bytes over all its namespaces."""

    threshold: float
    ttl_s: float
    max_entries: int
    max_bytes: int


@dataclass(frozen=True)
class Limits:
    """The server-wide bound over every feature and namespace (`--cache-max-entries`, `--cache-max-bytes`)."""

    max_entries: int = 100_000
    max_bytes: int = 256 << 20


@dataclass
class Entry:
    key: int
    namespace: str
    text_hash: str
    answer: str  # the cached Answer, as JSON
    request_id: str
    expires_at: float
    size: int

    @property
    def feature(self) -> str:
        return feature_of(self.namespace)


@dataclass(frozen=True)
class Hit:
    answer: str
    similarity: float
    request_id: str


def text_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.split()).lower().encode()).hexdigest()


def namespace(feature: str, material: dict) -> str:
    return f"{feature}|{hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]}"


def feature_of(ns: str) -> str:
    return ns.split("|", 1)[0]


def entry_size(answer: str, vector: np.ndarray, text: str) -> int:
    return len(answer.encode()) + vector.nbytes + len(text.encode())


class _Space:
    def __init__(self, dim: int, ann_min: int):
        self.index = VectorIndex(dim, ann_min)
        self.exact: dict[str, int] = {}


@dataclass
class _Usage:
    lru: OrderedDict[int, None] = field(default_factory=OrderedDict)  # this feature's keys, least recent first
    bytes: int = 0


class MemoryCache:
    """In-process backend. One lock guards everything; only embedding happens outside it."""

    def __init__(self, limits: Limits = Limits(), ann_min: int = ANN_MIN):
        self.limits, self.ann_min = limits, ann_min
        self._entries: OrderedDict[int, Entry] = OrderedDict()  # the whole cache, least recently used first
        self._spaces: dict[str, _Space] = {}
        self._features: dict[str, _Usage] = {}
        self._generations: dict[str, int] = {}  # bumped by invalidate_feature: older stores are refused
        self._by_request: dict[str, int] = {}
        self._served: OrderedDict[str, str] = OrderedDict()  # served-to request id -> source request id
        self._expiries: list[tuple[float, int]] = []  # heap; stale items are skipped and compacted away
        self._bytes = 0
        self._next = 0
        self._lock = threading.Lock()

    def generation(self, feature: str) -> int:
        with self._lock:
            return self._generations.get(feature, 0)

    def lookup(self, ns: str, text: str, vector_fn, policy: Policy, served_to: str | None = None) -> Hit | None:
        digest = text_hash(text)
        with self._lock:
            space = self._spaces.get(ns)
            if space is None:
                return None
            if digest in space.exact:
                return self._read(space.exact[digest], ns, 1.0, served_to)
        vector = vector_fn()  # the slow part, outside the lock; what it saw may be gone when it returns
        with self._lock:
            space = self._spaces.get(ns)
            found = space.index.search(vector) if space is not None else None
            if found is None or found[1] < policy.threshold:
                return None
            return self._read(found[0], ns, found[1], served_to)

    def insert(self, ns: str, text: str, vector: np.ndarray, answer: str, request_id: str, policy: Policy,
               generation: int | None = None) -> bool:
        """Store an answer; False when its feature was invalidated since `generation` was read."""
        feature = feature_of(ns)
        with self._lock:
            if generation is not None and self._generations.get(feature, 0) != generation:
                return False
            space = self._spaces.get(ns) or self._spaces.setdefault(ns, _Space(len(vector), self.ann_min))
            digest = text_hash(text)
            if digest in space.exact:
                self._drop(self._entries[space.exact[digest]])
            self._next += 1
            entry = Entry(self._next, ns, digest, answer, request_id, time.time() + policy.ttl_s,
                          entry_size(answer, vector, text))
            self._entries[entry.key] = entry
            space.exact[digest] = entry.key
            space.index.add(entry.key, vector)
            usage = self._features.setdefault(feature, _Usage())
            usage.lru[entry.key] = None
            usage.bytes += entry.size
            self._bytes += entry.size
            self._by_request[request_id] = entry.key
            heapq.heappush(self._expiries, (entry.expires_at, entry.key))
            while usage.lru and (len(usage.lru) > policy.max_entries or usage.bytes > policy.max_bytes):
                self._drop(self._entries[next(iter(usage.lru))])
            while self._entries and (len(self._entries) > self.limits.max_entries
                                     or self._bytes > self.limits.max_bytes):
                self._drop(next(iter(self._entries.values())))
            return True

    def invalidate_feature(self, feature: str) -> int:
        with self._lock:
            self._generations[feature] = self._generations.get(feature, 0) + 1
            usage = self._features.get(feature)
            keys = list(usage.lru) if usage else []
            for key in keys:
                self._drop(self._entries[key])
            return len(keys)

    def invalidate_request(self, request_id: str) -> bool:
        """By the request that produced the answer, or by any request it was served to."""
        with self._lock:
            key = self._by_request.get(self._served.get(request_id, request_id))
            if key is None:
                return False
            self._drop(self._entries[key])
            return True

    def sweep(self, now: float | None = None) -> int:
        """Drop every expired entry; returns how many."""
        now = time.time() if now is None else now
        dropped = 0
        with self._lock:
            while self._expiries and self._expiries[0][0] <= now:
                expires_at, key = heapq.heappop(self._expiries)
                entry = self._entries.get(key)
                if entry is not None and entry.expires_at == expires_at:
                    self._drop(entry)
                    dropped += 1
            if len(self._expiries) > 2 * len(self._entries) + 1024:
                self._expiries = [(e.expires_at, e.key) for e in self._entries.values()]
                heapq.heapify(self._expiries)
        return dropped

    def stats(self) -> dict:
        with self._lock:
            return {"entries": len(self._entries), "bytes": self._bytes, "namespaces": len(self._spaces)}

    def _read(self, key: int, ns: str, similarity: float, served_to: str | None) -> Hit | None:
        entry = self._entries.get(key)
        if entry is None or entry.namespace != ns:
            return None
        if entry.expires_at <= time.time():
            self._drop(entry)
            return None
        self._entries.move_to_end(key)
        self._features[entry.feature].lru.move_to_end(key)
        if served_to is not None:
            self._served[served_to] = entry.request_id
            while len(self._served) > SERVED_IDS:
                self._served.popitem(last=False)
        return Hit(entry.answer, similarity, entry.request_id)

    def _drop(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self._bytes -= entry.size
        space = self._spaces[entry.namespace]
        if space.exact.get(entry.text_hash) == entry.key:
            del space.exact[entry.text_hash]
        space.index.remove(entry.key)
        if not len(space.index):
            del self._spaces[entry.namespace]
        usage = self._features[entry.feature]
        del usage.lru[entry.key]
        usage.bytes -= entry.size
        if not usage.lru:
            del self._features[entry.feature]
        if self._by_request.get(entry.request_id) == entry.key:
            del self._by_request[entry.request_id]
