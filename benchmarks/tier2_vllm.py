"""Tier 2 on vLLM (CPU build) through the unified endpoint: start time, then tok/s at 1 and N streams.

Starts `tier-runner serve --profile workstation` as a subprocess (the same helper the tests use),
measures the seconds from launch until GET /ready shows tier 2 ready, then sends greedy requests to
`tier:2`. tok/s = completion tokens / wall time of the requests (prefill included).
Usage: python benchmarks/tier2_vllm.py [--runs 5] [--max-tokens 128] [--streams 4]
Needs `make vllm-setup`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import ServerProcess  # noqa: E402

PROMPTS = ["Write a long story about a lighthouse keeper.", "Explain how rain forms, in detail.",
           "Describe a busy market in a big city.", "Tell me about the history of bread."]


def ask(base_url: str, prompt: str, max_tokens: int) -> int:
    body = {"model": "tier:2", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=300)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()
    log = Path(tempfile.mkdtemp()) / "gateway.log"
    started = time.monotonic()
    server = ServerProcess("--profile", "workstation", log_path=log)
    try:
        server.wait_ready(timeout=600)
        ready_s = time.monotonic() - started
        ask(server.base_url, "Hi", 4)  # warm-up
        single = []
        for i in range(args.runs):
            t0 = time.monotonic()
            tokens = ask(server.base_url, PROMPTS[i % len(PROMPTS)], args.max_tokens)
            single.append(tokens / (time.monotonic() - t0))
        with ThreadPoolExecutor(args.streams) as pool:
            t0 = time.monotonic()
            totals = list(pool.map(lambda i: ask(server.base_url, PROMPTS[i % len(PROMPTS)], args.max_tokens),
                                   range(args.streams * 2)))
            concurrent = sum(totals) / (time.monotonic() - t0)
    finally:
        server.stop()
    print(f"gateway + vLLM ready after {ready_s:.1f} s (launch to GET /ready 200)")
    print(f"1 stream: median {statistics.median(single):.1f} tok/s (min {min(single):.1f}, max {max(single):.1f}, "
          f"{args.runs} runs of {args.max_tokens} tokens max)")
    print(f"{args.streams} streams: {concurrent:.1f} tok/s aggregate ({args.streams * 2} requests)")


if __name__ == "__main__":
    main()
