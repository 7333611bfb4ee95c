"""SNIPS intents as function calling on Tier 3: each intent is a function, its SNIPS slots the parameters.

Data: the shipped snips-intent suite (BIG-bench intent_recognition, 693 SNIPS utterances, 7 intents), the same
seeded sample the eval uses. Both shipped GGUF models on llama.cpp behind one gateway (Qwen2.5-Coder-0.5B on
tier:3, SmolLM2-135M on tier:2), one request at a time, temperature 0. For each model and tool_choice (auto,
required): the share of answers that are a valid call (a call, of an offered function, whose arguments parse
and match its schema: the tool_call gate's test), the share that call the right intent's function, and
completion tokens per second of wall time. The same model's plain-text intent accuracy (the suite's own
prompt and label scorer) runs in the same gateway, so the two are comparable. Shares carry Wilson intervals.

Usage: python benchmarks/snips_tools.py [--n 100]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import jsonschema

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from conftest import ServerProcess  # noqa: E402
from evals.suite import load_suite  # noqa: E402
from tiers.ledger.stats import wilson_interval  # noqa: E402

# The SNIPS NLU benchmark's slot names per intent (Coucke et al., 2018): the functions' parameters.
SLOTS = {
    "add_to_playlist": ["artist", "playlist", "music_item", "entity_name", "playlist_owner"],
    "book_restaurant": ["restaurant_name", "restaurant_type", "party_size_number", "party_size_description",
                        "served_dish", "cuisine", "city", "state", "country", "spatial_relation", "poi", "timeRange",
                        "sort", "facility"],
    "get_weather": ["city", "state", "country", "timeRange", "condition_description", "condition_temperature",
                    "geographic_poi", "spatial_relation", "current_location"],
    "play_music": ["artist", "album", "track", "genre", "year", "service", "music_item", "playlist", "sort"],
    "rate_book": ["object_name", "object_type", "rating_value", "best_rating", "rating_unit", "object_select",
                  "object_part_of_series_type"],
    "search_creative_work": ["object_name", "object_type"],
    "search_screening_event": ["movie_name", "movie_type", "location_name", "object_type", "object_location_type",
                               "timeRange", "spatial_relation"],
}
DESCRIPTIONS = {
    "add_to_playlist": "Add a song, artist or album to a playlist.",
    "book_restaurant": "Book a table at a restaurant.",
    "get_weather": "Get the weather forecast for a place and time.",
    "play_music": "Play music: a song, an artist, an album or a genre.",
    "rate_book": "Give a rating to a book or another written work.",
    "search_creative_work": "Find a creative work: a book, film, song, TV show or game.",
    "search_screening_event": "Find movie showtimes or cinemas.",
}
TOOLS = [{"type": "function", "function": {
    "name": intent, "description": DESCRIPTIONS[intent],
    "parameters": {"type": "object", "properties": {s: {"type": "string"} for s in slots}, "additionalProperties": False}}}
    for intent, slots in SLOTS.items()]
SYSTEM = "You are a voice assistant. Call the one function that does what the user asks."
MODELS = {"tier:3": "qwen2.5-coder-0.5b-instruct-q4_k_m", "tier:2": "smollm2-135m-instruct-q4_1"}
PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: qwen2.5-coder-0.5b-instruct-q4_k_m, max_batch: 2, n_ctx: 4096}
  2: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 2, n_ctx: 4096}
"""


def valid_call(message: dict) -> tuple[bool, str | None]:
    """(a valid call, the function it names): one call, an offered name, arguments that parse and fit."""
    calls = message.get("tool_calls") or []
    if not calls:
        return False, None
    name = calls[0]["function"]["name"]
    tool = next((t for t in TOOLS if t["function"]["name"] == name), None)
    try:
        jsonschema.validate(json.loads(calls[0]["function"]["arguments"]), tool["function"]["parameters"])
    except (TypeError, ValueError, jsonschema.ValidationError):
        return False, name
    return True, name


def run_tools(base: str, model: str, mode: str, samples) -> dict:
    valid = right = tokens = 0
    started = time.perf_counter()
    for sample in samples:
        body = {"model": model, "temperature": 0, "max_tokens": 96, "tools": TOOLS, "tool_choice": mode,
                "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": sample.fields["utterance"]}]}
        reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300).json()
        ok, name = valid_call(reply["choices"][0]["message"])
        valid += ok
        right += ok and name == sample.target
        tokens += reply["usage"]["completion_tokens"]
    return {"valid": valid, "right": right, "n": len(samples), "tok_s": tokens / (time.perf_counter() - started)}


def run_text(base: str, model: str, suite, samples) -> dict:
    scorer = suite.build_scorer()
    correct = tokens = 0
    started = time.perf_counter()
    for sample in samples:
        body = {"model": model, "temperature": 0, "max_tokens": suite.max_tokens, "messages": suite.messages(sample)}
        reply = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=300).json()
        correct += scorer.score(reply["choices"][0]["message"]["content"] or "", sample.target).verdict == "correct"
        tokens += reply["usage"]["completion_tokens"]
    return {"right": correct, "n": len(samples), "tok_s": tokens / (time.perf_counter() - started)}


def share(k: int, n: int) -> str:
    low, high = wilson_interval(k, n)
    return f"{k / n:.0%} [{low:.0%}, {high:.0%}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="utterances per model and mode (of the suite's 200)")
    args = parser.parse_args()
    suite = load_suite("snips-intent")
    samples = suite.samples(limit=args.n)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "profile.yaml").write_text(PROFILE)
        gateway = ServerProcess("--profile", str(Path(tmp) / "profile.yaml"), log_path=Path(tmp) / "gateway.log")
        try:
            gateway.wait_ready(timeout=300)
            rows = []
            for model, name in MODELS.items():
                text = run_text(gateway.base_url, model, suite, samples)
                for mode in ("auto", "required"):
                    tools = run_tools(gateway.base_url, model, mode, samples)
                    rows.append((name, mode, tools, text))
                    print(f"{name} {mode}: {tools} / text {text}", file=sys.stderr, flush=True)
        finally:
            gateway.stop()
    print(f"SNIPS as function calling, Tier 3 (llama.cpp, 2 threads), n={len(samples)} utterances, temperature 0; "
          "[95% Wilson interval]\n")
    print("| model | tool_choice | valid calls | right function | tok/s (calls) | plain-text intent accuracy | tok/s (text) |")
    print("|---|---|---|---|---|---|---|")
    for name, mode, tools, text in rows:
        print(f"| {name} | {mode} | {share(tools['valid'], tools['n'])} | {share(tools['right'], tools['n'])} | "
              f"{tools['tok_s']:.1f} | {share(text['right'], text['n'])} | {text['tok_s']:.1f} |")


if __name__ == "__main__":
    main()
