"""The semantic cache with the real MiniLM embedder, on both backends: in process and a real Redis."""

from __future__ import annotations

import time

import numpy as np
import pytest

from runners.answer import Answer
from runners.request import Request
from runners.wire.openai_chat import from_completion, to_request
from runners.wire.openai_chat_protocol import ChatCompletion, ChatCompletionRequest
from tiers.cache.index import VectorIndex
from tiers.cache.semantic import CachePolicy, SemanticCache, cacheable

POLICY = CachePolicy(threshold=0.9, ttl_s=3600)


def ask(text: str, system: str | None = None, **params) -> Request:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return to_request(ChatCompletionRequest(model="feature:faq", messages=messages, temperature=0, **params))


def answer(text: str) -> Answer:
    return from_completion(ChatCompletion.model_validate({
        "id": "c1", "created": 1, "model": "m", "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        "choices": [{"message": {"content": text}, "finish_reason": "stop"}]}))


@pytest.fixture(params=["memory", "redis"])
def make_cache(request):
    """A SemanticCache on each backend (Redis flushed first); call it again for a second replica."""
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        import redis

        redis.Redis.from_url(url).flushdb()
    return lambda embedder="minilm", **kw: SemanticCache(embedder, request.param, url, **kw)


@pytest.fixture
def cache(make_cache):
    return make_cache()


async def put(cache, text, reply, request_id, policy=POLICY, key=None, feature="faq", **kw):
    """Store an answer, as client key `key` (None: a keyless server)."""
    scope = () if key is None else (key,)
    return await cache.store(feature, ask(text, **kw), 3, "m", policy, answer(reply), request_id, *scope)


async def get(cache, text, request_id="req_q", policy=POLICY, key=None, feature="faq", **kw):
    scope = () if key is None else (key,)
    found = await cache.lookup(feature, ask(text, **kw), 3, "m", policy, request_id, *scope)
    return found[0].first.text if found else None


async def test_paraphrase_hits_and_unrelated_misses(cache):
    await put(cache, "How do I reset my password?", "Use the reset link.", "req_1")
    found = await cache.lookup("faq", ask("How can I reset my password?"), 3, "m", POLICY, "req_2")
    assert found is not None
    completion, hit = found
    assert completion.first.text == "Use the reset link."
    assert 0.9 <= hit.similarity < 1.0 and completion.id != "c1"
    assert await get(cache, "What is the weather in Paris?") is None
    assert await get(cache, "How do I reset my router?") is None
    assert await get(cache, "  how do I reset my PASSWORD?  ") == "Use the reset link."  # exact path


async def test_anything_that_changes_the_answer_changes_the_key(cache):
    await put(cache, "How do I reset my password?", "Use the reset link.", "req_1", system="You are terse.")
    assert await get(cache, "How do I reset my password?", system="You are terse.") == "Use the reset link."
    assert await get(cache, "How do I reset my password?", system="You are a pirate.") is None
    assert await get(cache, "How do I reset my password?", system="You are terse.", max_tokens=5) is None
    assert await get(cache, "How do I reset my password?", system="You are terse.",
                     response_format={"type": "json_object"}) is None
    assert await cache.lookup("faq", ask("How do I reset my password?", system="You are terse."), 2, "m", POLICY,
                              "r") is None  # another tier
    assert await cache.lookup("other", ask("How do I reset my password?", system="You are terse."), 3, "m", POLICY,
                              "r") is None  # another feature


async def test_entries_expire(cache):
    short = CachePolicy(threshold=0.9, ttl_s=0.3)
    await put(cache, "Where is my parcel?", "On its way.", "req_1", policy=short)
    assert await get(cache, "Where is my parcel?", policy=short) == "On its way."
    time.sleep(0.4)
    assert await get(cache, "Where is my parcel?", policy=short) is None


async def test_eviction_keeps_the_byte_bound_and_drops_least_recently_used(cache):
    tight = CachePolicy(threshold=0.99, ttl_s=3600, max_bytes=4096)
    questions = [f"Question number {i} about topic {i * 7}?" for i in range(12)]
    for i, question in enumerate(questions):
        await put(cache, question, "x" * 200, f"req_{i}", policy=tight)
        if i >= 1:
            assert await get(cache, questions[0], policy=tight) == "x" * 200  # keep the first one in use
    stats = cache.stats()
    assert stats["bytes"] <= 4096
    assert 0 < stats["entries"] < 12
    assert await get(cache, questions[0], policy=tight) is not None
    assert await get(cache, questions[1], policy=tight) is None


async def test_invalidation_by_feature_and_by_request(cache):
    await put(cache, "How do I reset my password?", "Use the reset link.", "req_source")
    assert await get(cache, "How can I reset my password?", request_id="req_served") is not None
    assert cache.invalidate_request("req_served")  # feedback arrives with the id the client saw
    assert await get(cache, "How do I reset my password?") is None
    assert not cache.invalidate_request("req_source")
    await put(cache, "Cancel my subscription", "Settings > Billing.", "req_2")
    assert cache.invalidate_feature("faq") == 1
    assert await get(cache, "Cancel my subscription") is None


def test_only_deterministic_requests_are_cached_unless_opted_in():
    assert cacheable(ask("hi"), POLICY)
    warm = ask("hi").model_copy(update={"temperature": 0.7})
    assert not cacheable(warm, POLICY)
    assert cacheable(warm, CachePolicy(nondeterministic=True))


def test_ann_index_agrees_with_exact_search():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    exact, ann = VectorIndex(64, ann_min=10**9), VectorIndex(64, ann_min=1000)
    for i, v in enumerate(vectors):
        exact.add(i, v)
        ann.add(i, v)
    for i in range(0, 3000, 3):
        exact.remove(i)
        ann.remove(i)
    queries = vectors[1::3][:200] + rng.normal(scale=0.05, size=(200, 64)).astype(np.float32)
    agree = sum(exact.search(q)[0] == ann.search(q)[0] for q in queries)
    assert ann._hnsw is not None and len(ann) == 2000
    assert agree >= 196  # HNSW is approximate; near-duplicates must still be found
    assert all(ann.search(q)[0] % 3 != 0 for q in queries)  # removed keys never come back
