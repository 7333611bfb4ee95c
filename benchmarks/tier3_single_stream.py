"""Single-stream Tier 3 speed: the unified endpoint against llama-cpp-python called directly, in one run.

Both use the same GGUF file, thread count, prompts, max_tokens and greedy decoding. They run one after
the other (never at once). tok/s = completion tokens / wall time of the whole request (prefill included).
Usage: python benchmarks/tier3_single_stream.py [--runs 7] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import ServerProcess  # noqa: E402  (the same subprocess helper the tests use)

from hardware.catalog import load_catalog, resolve_model_file  # noqa: E402
from hardware.profile import load_profile  # noqa: E402

PROMPTS = [
    "Write a long story about a lighthouse keeper.",
    "Explain how rain forms, in detail.",
    "Describe a busy market in a big city.",
]


def direct(model_path: Path, threads: int, n_ctx: int, runs: int, max_tokens: int) -> list[float]:
    from runners.llama.layout import llama

    llm = llama(model_path=str(model_path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
    rates = []
    for i in range(runs):
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        start = time.perf_counter()
        out = llm.create_chat_completion(messages=messages, max_tokens=max_tokens, temperature=0)
        rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
    del llm
    return rates


def endpoint(runs: int, max_tokens: int, log_dir: Path) -> list[float]:
    server = ServerProcess(log_path=log_dir / "bench-server.log")
    try:
        server.wait_ready()
        rates = []
        with httpx.Client(timeout=120) as client:
            for i in range(runs):
                body = {"model": "tier:3", "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                        "max_tokens": max_tokens, "temperature": 0}
                start = time.perf_counter()
                response = client.post(f"{server.base_url}/v1/chat/completions", json=body)
                response.raise_for_status()
                rates.append(response.json()["usage"]["completion_tokens"] / (time.perf_counter() - start))
        return rates
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    _, profile = load_profile("cpu-tier3")
    placement = profile.tiers[3]
    threads = len(os.sched_getaffinity(0)) if placement.options.get("threads", "auto") == "auto" else placement.options["threads"]
    n_ctx = placement.options.get("n_ctx", 2048)
    model_path = resolve_model_file(placement.model, load_catalog())
    log_dir = Path(os.environ.get("TMPDIR", "/tmp"))

    direct(model_path, threads, n_ctx, 1, 8)  # warm the page cache for both
    ours = endpoint(args.runs, args.max_tokens, log_dir)
    theirs = direct(model_path, threads, n_ctx, args.runs, args.max_tokens)

    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(f"# Tier 3 single stream: {placement.model}, {threads} threads, max_tokens={args.max_tokens}, "
          f"{args.runs} runs each, temperature 0 ({platform.processor() or platform.machine()})")
    print()
    print("| path | median tok/s | min | max |")
    print("|---|---|---|---|")
    print(f"| unified endpoint (HTTP, tier:3) | {ours_median:.1f} | {min(ours):.1f} | {max(ours):.1f} |")
    print(f"| llama-cpp-python `Llama.create_chat_completion` (in process) | {theirs_median:.1f} | {min(theirs):.1f} | {max(theirs):.1f} |")
    print()
    print(f"ratio endpoint / direct (medians): {ours_median / theirs_median:.2f}")


if __name__ == "__main__":
    main()
