"""The collector stays out of the request path (tiers/heap.py): under steady load the real server runs no full
collection and next to no young ones, where CPython's defaults ran one every few requests."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

REQUESTS, CLIENTS = 240, 8


def collections(base_url: str) -> dict[str, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    family = next(f for f in text_string_to_metric_families(text) if f.name == "python_gc_collections")
    return {sample.labels["generation"]: sample.value for sample in family.samples}


def test_steady_load_runs_no_full_collection_and_almost_no_young_ones(server):
    body = {"model": "tier:3", "max_tokens": 1, "temperature": 0, "messages": [{"role": "user", "content": "Say yes."}]}
    before = collections(server.base_url)
    with httpx.Client(timeout=120) as client, ThreadPoolExecutor(CLIENTS) as pool:
        codes = list(pool.map(lambda _: client.post(f"{server.base_url}/v1/chat/completions", json=body).status_code,
                              range(REQUESTS)))
    after = collections(server.base_url)
    assert codes == [200] * REQUESTS
    ran = {generation: after[generation] - before[generation] for generation in before}
    assert ran["2"] == 0, ran
    assert ran["0"] <= REQUESTS / 100, ran  # CPython's defaults ran about one per six requests here
