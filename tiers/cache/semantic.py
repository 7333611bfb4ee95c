"""The cache as the serving layer sees it: what may be cached, under which key, and hit or store.

A backend that fails never fails a request: `lookup` raises `CacheUnavailable`, which the serving
layer answers from the model with `x-cache: error`, and the failure shows on /ready and /metrics
(tiers/cache/health.py). An answer whose request began before its feature was invalidated is not
stored: the feature's generation, read at the miss, must still hold when the answer arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from hardware.extras import require_extra

from runners.answer import Answer, new_id
from runners.request import Request
from tiers.cache.embedders import Embedder, load_embedder
from tiers.cache.health import CacheHealth
from tiers.cache.index import ANN_MIN
from tiers.cache.store import Hit, Limits, MemoryCache, Policy, namespace
from tiers.errors import CacheUnavailable

# The lowest threshold whose wrong hits stay <= 1% of lookups on MRPC with MiniLM (docs/benchmarks.md).
DEFAULT_THRESHOLD = 0.98
PENDING = 10_000  # misses whose answers may still arrive: their feature generation, by request id


class CachePolicy(BaseModel):
    """A feature's cache settings in the routing table."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, le=1, description="cosine similarity needed for a hit")
    ttl_s: float = Field(default=86400, gt=0, description="seconds an answer stays valid")
    max_entries: int = Field(default=10_000, ge=1, description="LRU bound on this feature's entries, all namespaces")
    max_bytes: int = Field(default=64 << 20, ge=1024, description="LRU bound on this feature's bytes, all namespaces")
    nondeterministic: bool = Field(default=False, description="also cache requests with temperature > 0")
    shared: bool = Field(default=False, description="one cache for every client key; by default each key has its own")

    def policy(self) -> Policy:
        return Policy(self.threshold, self.ttl_s, self.max_entries, self.max_bytes)


def cacheable(request: Request, policy: CachePolicy) -> bool:
    if request.prompt is None and (not request.messages or request.messages[-1].role != "user"):
        return False
    return request.temperature == 0 or policy.nondeterministic


def key_material(request: Request, tier: int, model: str, scope: str | None) -> dict:
    """Everything that changes the answer (tools and tool_choice included) and whose answer it is (the client
    key, unless the feature shares its cache), except the last user message or the prompt, which is compared
    semantically."""
    fields = request.model_dump(mode="json", exclude={"messages", "prompt", "stream", "user"}, exclude_defaults=True)
    earlier = [m.model_dump(mode="json", exclude_defaults=True) for m in request.messages[:-1]]
    return {"tier": tier, "model": model, "scope": scope, "context": earlier, "params": fields}


class SemanticCache:
    def __init__(self, embedder: str = "minilm", backend: str = "memory", redis_url: str | None = None, *,
                 limits: Limits = Limits(), embedder_model: Path | None = None, ann_min: int = ANN_MIN,
                 sweep_interval_s: float = 60.0):
        self.embedder_name, self.embedder_model = embedder, embedder_model
        self._embedder: Embedder | None = None
        self.health = CacheHealth(backend)
        self.sweep_interval_s = sweep_interval_s
        self.limits, self.ann_min = limits, ann_min
        self.backend = backend
        if backend == "redis":
            from tiers.cache.redis_store import RedisCache

            self._backend = RedisCache(redis_url, limits)
        else:
            self._backend = MemoryCache(limits, ann_min)
        self._pending: OrderedDict[str, int] = OrderedDict()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.embedder_name, self.embedder_model)
        return self._embedder

    def _embed(self, text: str):
        return self.embedder.embed([text])[0]

    def check_table(self, table) -> None:
        """A memory cache switches a namespace to faiss HNSW at `ann_min` entries: a routing table whose cached
        feature may grow that far needs the faiss extra, said now (at start or reload), not at the 20,000th answer."""
        if self.backend != "memory" or self.limits.max_entries < self.ann_min:
            return
        for name, spec in sorted(table.features.items()):
            if spec.cache and spec.cache.enabled and spec.cache.max_entries >= self.ann_min:
                require_extra("faiss", "faiss", f"feature {name!r}'s cache (max_entries {spec.cache.max_entries}, "
                                                f"past the {self.ann_min:,} entries where the memory cache searches "
                                                f"with HNSW)")

    def warm(self) -> None:
        """Load the embedder at start, not on the first request."""
        self._embed("warm up")

    def _namespace(self, feature: str, request: Request, tier: int, model: str, policy: CachePolicy,
                   client_key_id: str | None) -> str:
        return namespace(feature, key_material(request, tier, model, None if policy.shared else client_key_id))

    async def lookup(self, feature: str, request: Request, tier: int, model: str, policy: CachePolicy,
                     request_id: str, client_key_id: str | None = None) -> tuple[Answer, Hit] | None:
        ns = self._namespace(feature, request, tier, model, policy, client_key_id)
        text = request.last_user_text()

        def find() -> tuple[int, Hit | None]:
            generation = self._backend.generation(feature)
            return generation, self._backend.lookup(ns, text, lambda: self._embed(text), policy.policy(), request_id)

        generation, hit = await self._call("lookup", find)
        if hit is None:
            self._pending[request_id] = generation
            while len(self._pending) > PENDING:
                self._pending.popitem(last=False)
            return None
        cached = Answer.model_validate_json(hit.answer)
        return cached.model_copy(update={"id": new_id(), "created": int(time.time())}), hit

    async def store(self, feature: str, request: Request, tier: int, model: str, policy: CachePolicy,
                    answer: Answer, request_id: str, client_key_id: str | None = None) -> bool:
        """False when the feature was invalidated while the answer was being made."""
        ns = self._namespace(feature, request, tier, model, policy, client_key_id)
        text = request.last_user_text()
        generation = self._pending.pop(request_id, None)

        def insert() -> bool:
            return self._backend.insert(ns, text, self._embed(text), answer.model_dump_json(), request_id,
                                        policy.policy(), generation)

        return await self._call("store", insert)

    async def _call(self, op: str, work):
        return await asyncio.to_thread(self._sync, op, work)

    def invalidate_feature(self, feature: str) -> int:
        return self._sync("invalidate", lambda: self._backend.invalidate_feature(feature))

    def invalidate_request(self, request_id: str) -> bool:
        """By the request that produced the answer, or by any request the answer was served to (any replica)."""
        return self._sync("invalidate", lambda: self._backend.invalidate_request(request_id))

    def _sync(self, op: str, work):
        try:
            result = work()
        except Exception as exc:  # a broken backend or embedder: serve without the cache, visibly
            self.health.failed(op, exc)
            raise CacheUnavailable(f"the semantic cache's {self.health.backend} backend failed "
                                   f"({exc.__class__.__name__}); GET /ready shows when it is back") from exc
        self.health.ok()
        return result

    async def sweep(self) -> int:
        """Drop expired entries (off the request path); a failure only marks the cache degraded."""
        try:
            return await self._call("sweep", self._backend.sweep)
        except CacheUnavailable:
            return 0

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval_s)
            await self.sweep()

    def stats(self) -> dict:
        return self._backend.stats()

