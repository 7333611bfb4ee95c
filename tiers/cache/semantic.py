"""The cache as the serving layer sees it: what may be cached, under which key, and hit or store."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from pydantic import BaseModel, ConfigDict, Field

from runners.answer import Answer, new_id
from runners.request import Request
from tiers.cache.embedders import load_embedder
from tiers.cache.store import Hit, MemoryCache, Policy, namespace

# The lowest threshold whose wrong hits stay <= 1% of lookups on MRPC with MiniLM (docs/benchmarks.md).
DEFAULT_THRESHOLD = 0.98


class CachePolicy(BaseModel):
    """A feature's cache settings in the routing table."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, le=1, description="cosine similarity needed for a hit")
    ttl_s: float = Field(default=86400, gt=0, description="seconds an answer stays valid")
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 << 20, ge=1024, description="LRU eviction bound per namespace")
    nondeterministic: bool = Field(default=False, description="also cache requests with temperature > 0")

    def policy(self) -> Policy:
        return Policy(self.threshold, self.ttl_s, self.max_entries, self.max_bytes)


def cacheable(request: Request, policy: CachePolicy) -> bool:
    if request.prompt is None and (not request.messages or request.messages[-1].role != "user"):
        return False
    return request.temperature == 0 or policy.nondeterministic


def key_material(request: Request, tier: int, model: str) -> dict:
    """Everything that changes the answer (tools and tool_choice included), except the last user message or
    the prompt, which is compared semantically."""
    fields = request.model_dump(mode="json", exclude={"messages", "prompt", "stream", "user"}, exclude_defaults=True)
    earlier = [m.model_dump(mode="json", exclude_defaults=True) for m in request.messages[:-1]]
    return {"tier": tier, "model": model, "context": earlier, "params": fields}


class SemanticCache:
    def __init__(self, embedder: str = "minilm", backend: str = "memory", redis_url: str | None = None,
                 ann_min: int = 20_000):
        self.embedder_name = embedder
        self._embedder = None
        self._backend_args = (backend, redis_url, ann_min)
        self._backend = None
        self._served_from: OrderedDict[str, str] = OrderedDict()  # hit request id -> source request id

    def _ready(self):
        if self._backend is None:
            self._embedder = load_embedder(self.embedder_name)
            backend, redis_url, ann_min = self._backend_args
            if backend == "redis":
                from tiers.cache.redis_store import RedisCache

                self._backend = RedisCache(redis_url, self._embedder.dim)
            else:
                self._backend = MemoryCache(self._embedder.dim, ann_min)
        return self._backend

    def warm(self) -> None:
        """Load the embedder at start, not on the first request."""
        self._ready()
        self._embedder.embed(["warm up"])

    async def lookup(self, feature: str, request: Request, tier: int, model: str,
                     policy: CachePolicy, request_id: str) -> tuple[Answer, Hit] | None:
        backend = self._ready()
        ns = namespace(feature, key_material(request, tier, model))
        text = request.last_user_text()
        hit = await asyncio.to_thread(backend.lookup, ns, text, lambda: self._embedder.embed([text])[0],
                                      policy.policy())
        if hit is None:
            return None
        self._served_from[request_id] = hit.request_id
        while len(self._served_from) > 100_000:
            self._served_from.popitem(last=False)
        cached = Answer.model_validate_json(hit.answer)
        return cached.model_copy(update={"id": new_id(), "created": int(time.time())}), hit

    async def store(self, feature: str, request: Request, tier: int, model: str, policy: CachePolicy,
                    answer: Answer, request_id: str) -> None:
        backend = self._ready()
        ns = namespace(feature, key_material(request, tier, model))
        text = request.last_user_text()
        vector = (await asyncio.to_thread(self._embedder.embed, [text]))[0]
        await asyncio.to_thread(backend.insert, ns, text, vector, answer.model_dump_json(), request_id,
                                policy.policy())

    def _existing(self):
        """The backend if anything can be cached in it: an unused in-process cache is empty."""
        if self._backend is None and self._backend_args[0] == "memory":
            return None
        return self._ready()

    def invalidate_feature(self, feature: str) -> int:
        backend = self._existing()
        return backend.invalidate_feature(feature) if backend else 0

    def invalidate_request(self, request_id: str) -> bool:
        """By the request that produced the answer, or by any request the answer was served to."""
        backend = self._existing()
        return bool(backend) and backend.invalidate_request(self._served_from.get(request_id, request_id))

    def stats(self) -> dict:
        backend = self._existing()
        return backend.stats() if backend else {"entries": 0, "bytes": 0, "namespaces": 0}
