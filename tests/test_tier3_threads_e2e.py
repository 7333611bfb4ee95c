"""Tier 3's llama.cpp threads keep spinning at their barriers with the semantic cache's embedder loaded in the
same process (tiers/cache/embedders.py): torch and llama.cpp share one OpenMP runtime, which makes every thread it
manages sleep and wake at each barrier once it manages more threads than there are cores. Sleeping shows as
voluntary context switches: 240 per generated token with the embedder on two threads, 3 with it on one."""

from __future__ import annotations

import os

import httpx

BODY = {"model": "tier:3", "max_tokens": 64, "min_tokens": 64, "temperature": 0,
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]}


def voluntary_switches(pid: int) -> int:
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{thread}/status") as status:
                total += next(int(line.split()[1]) for line in status if line.startswith("voluntary_ctxt_switches"))
        except FileNotFoundError:  # a thread that ended in between
            pass
    return total


def test_a_generation_beside_the_warm_cache_embedder_does_not_sleep_at_every_barrier(server):
    # The shipped routing table caches features, so the server warmed the minilm embedder (torch) at start.
    with open(f"/proc/{server.proc.pid}/maps") as maps:
        assert "libtorch_cpu" in maps.read()
    with httpx.Client(timeout=120) as client:
        client.post(f"{server.base_url}/v1/chat/completions", json=BODY).raise_for_status()  # warm the slot
        before = voluntary_switches(server.proc.pid)
        response = client.post(f"{server.base_url}/v1/chat/completions", json=BODY)
        after = voluntary_switches(server.proc.pid)
    response.raise_for_status()
    tokens = response.json()["usage"]["completion_tokens"]
    assert tokens == 64
    assert (after - before) / tokens < 20, f"{after - before} voluntary context switches for {tokens} tokens"
