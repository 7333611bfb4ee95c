"""The cache keeps its promises under pressure, on both backends, with the real MiniLM embedder and a real Redis:
bounded over the whole cache, swept, scoped to the client key, and never serving what was just invalidated."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.test_cache import answer, cache, get, make_cache, put  # noqa: F401  (cache, make_cache: fixtures)
from tiers.cache.embedders import EMBEDDERS, MiniLM, register
from tiers.cache.semantic import CachePolicy, SemanticCache
from tiers.cache.store import Limits, MemoryCache, Policy, entry_size

QUESTION = "How do I reset my password?"


async def test_the_whole_cache_is_bounded_over_every_namespace_and_feature(make_cache):
    """--cache-max-entries: one namespace per system prompt, each within its feature's bound, still one cap."""
    cache = make_cache(limits=Limits(max_entries=4, max_bytes=1 << 30))
    for i in range(10):
        await put(cache, QUESTION, f"answer {i}", f"req_{i}", system=f"You are assistant number {i}.",
                  feature="faq" if i % 2 else "help")
    stats = cache.stats()
    assert stats["entries"] == 4 and stats["namespaces"] == 4  # a namespace goes with its last entry
    assert await get(cache, QUESTION, system="You are assistant number 9.") == "answer 9"
    assert await get(cache, QUESTION, system="You are assistant number 5.") is None  # least recently used went


async def test_the_whole_cache_is_bounded_in_bytes(make_cache):
    """--cache-max-bytes: the byte cap holds over every namespace, the least recently used entry going first."""
    one = entry_size(answer("answer 0").model_dump_json(), np.zeros(384, np.float32), QUESTION)
    cache = make_cache(limits=Limits(max_entries=1000, max_bytes=int(one * 3.5)))
    for i in range(8):
        await put(cache, QUESTION, f"answer {i}", f"req_{i}", system=f"You are assistant number {i}.")
    stats = cache.stats()
    assert stats["entries"] == 3 and stats["namespaces"] == 3 and stats["bytes"] <= one * 3.5
    assert await get(cache, QUESTION, system="You are assistant number 7.") == "answer 7"


async def test_expired_entries_are_swept_without_being_asked_for_again(make_cache):
    """docs/cache.md: entries expire after ttl_s and are swept periodically, off the request path."""
    cache = make_cache(sweep_interval_s=0.1)
    short = CachePolicy(threshold=0.9, ttl_s=0.3)
    for i in range(5):
        await put(cache, QUESTION, "Use the reset link.", f"req_{i}", policy=short, system=f"Persona {i}.")
    await put(cache, QUESTION, "Use the reset link.", "req_kept", system="Persona kept.")
    assert cache.stats()["entries"] == 6
    sweeper = asyncio.create_task(cache.sweep_forever())
    await asyncio.sleep(1.0)
    sweeper.cancel()
    stats = cache.stats()
    assert stats["entries"] == 1 and stats["namespaces"] == 1
    assert await get(cache, QUESTION, system="Persona kept.") == "Use the reset link."


async def test_answers_are_scoped_to_the_client_key_unless_the_feature_shares_them(cache):
    """docs/cache.md: with client keys, each key has its own cache unless the feature sets `cache.shared`."""
    await put(cache, "What is my account balance?", "Yours is $12.", "req_a", key="tenant-a")
    assert await get(cache, "What is my account balance?", key="tenant-a") == "Yours is $12."
    assert await get(cache, "What is my account balance?", key="tenant-b") is None
    assert await get(cache, "What's my account balance?", key="tenant-b") is None  # not semantically either
    assert await get(cache, "What is my account balance?") is None
    shared = CachePolicy(threshold=0.9, ttl_s=3600, shared=True)
    await put(cache, "What are your opening hours?", "9 to 5.", "req_s", policy=shared, key="tenant-a")
    assert await get(cache, "What are your opening hours?", policy=shared, key="tenant-b") == "9 to 5."


@pytest.fixture
def interleaved():
    """An embedder named `interleaved`: the real MiniLM, running `between[0]()` once after it embeds, i.e. between
    a lookup's exact miss and its vector search, where another request's invalidation can land."""
    between: list = [None]

    class Interleaved(MiniLM):
        def embed(self, texts):
            vectors = super().embed(texts)
            action, between[0] = between[0], None
            if action is not None:
                action()
            return vectors

    register("interleaved")(Interleaved)
    yield between
    del EMBEDDERS["interleaved"]


async def test_lookup_never_returns_an_answer_invalidated_while_it_embedded(make_cache, interleaved):
    cache = make_cache(embedder="interleaved")
    await put(cache, QUESTION, "Use the reset link.", "req_1")
    interleaved[0] = lambda: cache.invalidate_feature("faq")
    assert await get(cache, "How can I reset my password?") is None  # a paraphrase: it embeds, then searches
    assert interleaved[0] is None  # the invalidation did run in between
    await put(cache, QUESTION, "Use the reset link.", "req_2")
    interleaved[0] = lambda: cache.invalidate_request("req_2")
    assert await get(cache, "How can I reset my password?") is None


async def test_an_answer_begun_before_an_invalidation_is_not_stored(cache):
    """The miss, then `DELETE /admin/cache?feature=` while the model answers, then the answer: not cached."""
    assert await get(cache, "Where is my parcel?", request_id="req_1") is None
    cache.invalidate_feature("faq")
    assert await put(cache, "Where is my parcel?", "On its way.", "req_1") is False
    assert await get(cache, "Where is my parcel?") is None
    assert await get(cache, "Where is my parcel?", request_id="req_2") is None  # began after: stored as usual
    assert await put(cache, "Where is my parcel?", "On its way.", "req_2") is True
    assert await get(cache, "Where is my parcel?") == "On its way."


async def test_an_answer_served_by_one_replica_is_invalidated_from_another(redis_url):
    """docs/cache.md: `DELETE /admin/cache/<request_id>` works with the id of any request the answer was served to,
    on any replica sharing the Redis."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    a, b = SemanticCache("minilm", "redis", redis_url), SemanticCache("minilm", "redis", redis_url)
    await put(a, QUESTION, "Use the reset link.", "req_source")
    assert await get(b, "How can I reset my password?", request_id="req_served_by_b") == "Use the reset link."
    assert a.invalidate_request("req_served_by_b")
    assert await get(b, QUESTION) is None and await get(a, QUESTION) is None


def test_hnsw_engages_only_in_a_namespace_past_ann_min():
    """docs/cache.md: exact search per namespace, HNSW once one namespace passes `ann_min` (20,000 by default, so
    only for a feature whose max_entries is above it); the feature's bound keeps a namespace from getting there."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(700, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    wide, narrow = Policy(0.9, 3600, 1000, 1 << 30), Policy(0.9, 3600, 400, 1 << 30)
    cache = MemoryCache(ann_min=500)
    for i, vector in enumerate(vectors):
        cache.insert("wide|ns", f"question {i}", vector, "{}", f"w{i}", wide)
        cache.insert("narrow|ns", f"question {i}", vector, "{}", f"n{i}", narrow)
    assert cache._spaces["wide|ns"].index._hnsw is not None
    assert cache._spaces["narrow|ns"].index._hnsw is None and len(cache._spaces["narrow|ns"].index) == 400
    near = vectors[650] + rng.normal(scale=0.01, size=64).astype(np.float32)
    assert cache.lookup("wide|ns", "a paraphrase", lambda: near / np.linalg.norm(near), wide).request_id == "w650"
