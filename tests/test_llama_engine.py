"""The Tier 3 engine driven directly from Python with the real SmolLM2 model (no server, no mocks):
lifecycle and shutdown, where llama.cpp is called from, a full KV cache, end-of-turn text, logprobs under
stop strings, min_tokens, n choices sharing one prompt, and lazy grammars."""

from __future__ import annotations

import asyncio
import ctypes
import json
import subprocess
import sys
import textwrap
import threading

import llama_cpp
import pytest

from hardware.catalog import load_catalog, resolve_model_file
from runners.errors import InvalidRequest, TierUnavailable
from runners.llama import EngineOptions, Finished, LlamaEngine, Piece, SamplingParams
from tests.conftest import REPO

MODEL = resolve_model_file("smollm2-135m-instruct-q4_1", load_catalog())


def options(**overrides) -> EngineOptions:
    return EngineOptions(**{"threads": 2, "n_ctx": 2048, "max_batch": 4, "n_batch": 256, "max_queue": 8, **overrides})


def started(**overrides) -> LlamaEngine:
    engine = LlamaEngine(MODEL, options(**overrides))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def engine():
    engine = started()
    yield engine
    engine.close()


def chat(engine: LlamaEngine, text: str) -> list[int]:
    """The prompt the Tier 3 runner would send: the model's own chat template (SmolLM2 adds its system prompt)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    bos, eos = engine.bos_eos()
    formatter = Jinja2ChatFormatter(template=engine.chat_template(), eos_token=eos, bos_token=bos)
    prompt = formatter(messages=[{"role": "user", "content": text}]).prompt
    return engine.tokenize(prompt, add_special=False, parse_special=True)


async def run(engine: LlamaEngine, prompt: list[int], params: SamplingParams, **kwargs) -> tuple[str, list, Finished]:
    """The text, the token infos and the Finished event of a one-choice generation."""
    text, tokens, finished = [], [], None
    async for event in engine.generate(prompt, params, **kwargs):
        if isinstance(event, Piece):
            text.append(event.text)
            tokens.extend(event.tokens)
        else:
            finished = event
    return "".join(text), tokens, finished


# -- lifecycle ------------------------------------------------------------------------------------
async def test_a_request_after_the_engine_stopped_is_refused_with_503():
    engine = started()
    engine.close()
    with pytest.raises(TierUnavailable, match="stopped.*restart"):
        await asyncio.wait_for(run(engine, [1, 2, 3], SamplingParams(max_tokens=4)), timeout=20)


async def test_a_generation_in_flight_at_close_ends_with_503_not_a_hang():
    engine = started(max_batch=1)
    prompt = chat(engine, "Write a very long story about the sea.")
    generation = engine.generate(prompt, SamplingParams(temperature=0, max_tokens=1500))
    first = await generation.__anext__()
    assert isinstance(first, Piece)
    await asyncio.to_thread(engine.close)
    with pytest.raises(TierUnavailable, match="shutting down"):
        async with asyncio.timeout(20):
            async for _ in generation:
                pass


def test_close_during_a_long_decode_waits_for_it_instead_of_freeing_under_it(tmp_path):
    """One prefill of ~3,000 tokens in a single decode on one thread takes longer than any join timeout a
    close() could afford (about 37 s here). Freeing the model under it crashes the process (SIGSEGV)."""
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(REPO)!r})
        from pathlib import Path
        from runners.llama import EngineOptions, LlamaEngine, SamplingParams
        engine = LlamaEngine(Path({str(MODEL)!r}), EngineOptions(threads=1, n_ctx=3584, max_batch=1, n_batch=3072,
                                                               max_queue=0))
        engine.load()
        prompt = engine.tokenize("word " * 2990, add_special=False, parse_special=False)[:3000]

        async def consume():
            try:
                async for event in engine.generate(prompt, SamplingParams(temperature=0, max_tokens=64, min_tokens=64)):
                    pass
                return "all tokens"
            except Exception as exc:
                return type(exc).__name__

        async def main():
            outcome = asyncio.ensure_future(consume())
            await asyncio.sleep(3)  # the engine thread is inside llama_decode now
            await asyncio.to_thread(engine.close)
            print("closed", flush=True)
            print("outcome:", await outcome)

        asyncio.run(main())
        print("exit clean", flush=True)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr[-3000:])
    assert "closed" in done.stdout and "exit clean" in done.stdout
    assert "outcome: TierUnavailable" in done.stdout


# -- where llama.cpp is called from ---------------------------------------------------------------
async def test_grammars_are_built_on_the_engine_thread_not_the_event_loop(engine):
    """llama.cpp logs a bad grammar from the thread that parses it: that must be the engine's thread."""
    seen: list[tuple[str, str]] = []

    @llama_cpp.llama_log_callback
    def record(level, text, user_data):
        seen.append((threading.current_thread().name, text.decode("utf-8", "replace")))

    llama_cpp.llama_log_set(record, ctypes.c_void_p(0))
    try:
        with pytest.raises(InvalidRequest) as raised:
            await run(engine, chat(engine, "Say yes."), SamplingParams(grammar='root ::= "unclosed', max_tokens=4))
    finally:
        from llama_cpp import _logger

        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
    assert raised.value.param == "response_format"
    parsers = {name for name, text in seen if "grammar" in text}
    assert parsers == {"llama-engine"}, seen


def test_tokenize_after_close_is_refused_instead_of_reading_a_freed_vocab():
    engine = started()
    assert engine.tokenize("hello", add_special=False, parse_special=False)
    engine.close()
    with pytest.raises(TierUnavailable, match="stopped"):
        engine.tokenize("hello", add_special=False, parse_special=False)


# -- a full KV cache is recoverable ---------------------------------------------------------------
async def test_a_full_kv_cache_delays_sequences_instead_of_killing_the_tier():
    """Four sequences of ~150 tokens in a KV cache of 256 cells: llama_decode answers 1 (no slot) on the way;
    the engine waits, preempts and recomputes instead of failing, and every request gets its 110 tokens."""
    engine = started(n_ctx=256, max_batch=4, kv_size=256)
    try:
        prompts = [chat(engine, f"Tell me about the number {i}.") for i in range(4)]
        params = SamplingParams(temperature=0.8, seed=11, max_tokens=110, min_tokens=110)
        results = await asyncio.gather(*(run(engine, p, params) for p in prompts))
        for text, _, finished in results:
            assert finished.reason == "length" and finished.completion_tokens == 110, finished
            assert text
        assert engine.failure is None
        assert engine.stats["kv_full"] > 0, "the cache never filled: the test did not exercise recovery"
        text, _, finished = await run(engine, prompts[0], SamplingParams(temperature=0, max_tokens=8))
        assert finished.completion_tokens >= 1
    finally:
        engine.close()


# -- the host-memory prompt cache -----------------------------------------------------------------
def test_the_prompt_cache_measures_shared_prefixes_as_a_token_loop_would():
    """The cache compares prompts as bytes by binary search; it must agree with the plain loop everywhere:
    no common prefix, one token, all of it, past the limit, and large token ids."""
    import random

    from runners.llama.prompt_cache import _common, _key

    rng = random.Random(5)
    for _ in range(2000):
        a = [rng.choice((1, 2, 151_000, 2**31 - 1)) for _ in range(rng.randint(0, 40))]
        b = a[: rng.randint(0, len(a))] + [rng.choice((1, 3, 151_001)) for _ in range(rng.randint(0, 5))]
        limit = rng.randint(0, 50)
        expected = 0
        while expected < min(len(a), len(b), limit) and a[expected] == b[expected]:
            expected += 1
        assert _common(_key(a), _key(b), limit) == expected, (a, b, limit)


async def _a_b_a(engine: LlamaEngine) -> tuple[str, str, int, int]:
    """Prompt A, then B (which takes A's only slot), then A again: A's two answers and the tokens the third
    request did not have to prefill."""
    a = chat(engine, "Name three colours of the rainbow, please, in one short line.")
    b = chat(engine, "What is the capital city of France? Answer in a word.")
    params = SamplingParams(temperature=0, max_tokens=12)
    first, _, _ = await run(engine, a, params)
    await run(engine, b, params)
    before = engine.stats["reused"]
    again, _, _ = await run(engine, a, params)
    return first, again, engine.stats["reused"] - before, len(a)


async def test_a_prompt_whose_slot_was_taken_comes_back_from_host_memory_with_the_same_answer():
    """One slot, so B's prefill cuts A's KV down to the chat template both share. The cut part was saved to
    host memory first: A's second run restores it and prefills only its last token, and greedy decoding from
    the restored KV gives the same answer. With the cache off the slot only keeps the shared template."""
    on = started(max_batch=1)
    try:
        first, again, reused, length = await _a_b_a(on)
        assert first and again == first
        assert reused == length - 1, (reused, length)
        assert on.stats["restored"] == 1
    finally:
        on.close()
    off = started(max_batch=1, prompt_cache_mib=0)
    try:
        first, again, reused, length = await _a_b_a(off)
        assert again == first
        assert reused < length - 8 and off.stats["restored"] == 0, (reused, length)
    finally:
        off.close()


async def test_a_new_sequence_moves_idle_slots_to_host_memory_and_they_come_back_with_the_same_answer():
    """A and B run side by side in two slots of the unified KV cache, then C starts in A's: B's idle slot goes to host
    memory and out of the KV cache (decode steps attend over every cell in use, as native llama-server's
    --cache-idle-slots avoids). B again is restored from host memory, not found still sitting in its slot,
    and answers as before. With one KV buffer per sequence, idle slots cost nothing and stay."""
    a = "Name three colours of the rainbow, please, in one short line."
    b = "What is the capital city of France? Answer in a word."
    c = a + " Then count to five."  # starts like A, so it takes A's slot and B's is the idle one
    params = SamplingParams(temperature=0, max_tokens=12)
    for unified, restores in ((True, 1), (False, 0)):
        engine = started(max_batch=2, kv_unified=unified)
        try:
            (_, _, _), (first_b, _, _) = await asyncio.gather(run(engine, chat(engine, a), params),
                                                              run(engine, chat(engine, b), params))
            await run(engine, chat(engine, c), params)
            before = engine.stats["restored"]
            again_b, _, _ = await run(engine, chat(engine, b), params)
            assert again_b == first_b
            assert engine.stats["restored"] - before == restores, (unified, engine.stats)
        finally:
            engine.close()


async def test_a_match_that_saving_the_slot_evicts_is_not_restored_from_a_forgotten_entry():
    """A budget (2 MiB) for one prompt's KV, not two: A's third run finds A saved, but saving what the slot held (B)
    first evicts A, the oldest. The engine must not restore the evicted entry (it failed with a KeyError); A is
    prefilled instead and answers as before."""
    engine = started(max_batch=1, prompt_cache_mib=2)
    try:
        first, again, _, _ = await _a_b_a(engine)
        assert first and again == first
        assert engine.failure is None and engine.stats["restored"] == 0, engine.stats
    finally:
        engine.close()


async def test_a_saved_prefix_that_no_longer_fits_the_kv_cache_is_prefilled_instead():
    """A KV cache of 256 cells: a long generation fills it while a short prompt's prefix waits in host memory.
    Restoring that finds no room; the request is prefilled instead (waiting for room) and answers as before."""
    engine = started(n_ctx=256, max_batch=2, kv_size=256)
    try:
        a = chat(engine, "Name three colours of the rainbow, please, in one short line.")
        b = chat(engine, "What is the capital city of France? Answer in a word.")
        params = SamplingParams(temperature=0, max_tokens=12)
        expected, _, _ = await run(engine, a, params)
        await asyncio.gather(run(engine, b, params), run(engine, b, params))  # both slots taken: A's prefix saved
        long_prompt = chat(engine, "Count from one to one hundred.")
        before = engine.stats["steps"]  # from here each decode step is one token of the long generation
        hogging = asyncio.ensure_future(run(engine, long_prompt, SamplingParams(temperature=0, max_tokens=215,
                                                                               min_tokens=215)))
        while len(long_prompt) + engine.stats["steps"] - before < 256 - len(a) // 2:  # too few cells left for A
            await asyncio.sleep(0.02)
        text, _, finished = await run(engine, a, params)
        await hogging
        assert engine.stats["restore_refused"] >= 1, engine.stats
        assert text == expected and finished.completion_tokens >= 1
        assert engine.failure is None
    finally:
        engine.close()


# -- text out -------------------------------------------------------------------------------------
def test_end_of_turn_flushes_a_character_cut_short(engine):
    """The model never ends mid-character on its own, so feed text-out the real vocab's tokens of an emoji
    less its last one, then end the turn: the cut character must appear as U+FFFD, not vanish."""
    from runners.llama.text import TextOut

    tokens = engine.tokenize("ok 🮿", add_special=False, parse_special=False)
    pieces = [engine.token_bytes(t) for t in tokens]
    assert len(pieces) >= 3 and b"".join(pieces) == "ok 🮿".encode()
    out = TextOut(stops=(), logprobs=False)
    for raw in pieces[:-1]:
        out.add(raw, None)
    text, _ = out.finish(cut=None)
    assert text == b"".join(pieces[:-1]).decode("utf-8", "replace")
    assert text.endswith("\ufffd")


async def test_logprobs_match_the_text_when_a_stop_string_cuts_it(engine):
    prompt = chat(engine, "Count from 1 to 10, separated by commas.")
    params = SamplingParams(temperature=0, max_tokens=40, stop=("4",), logprobs=True, top_logprobs=2)
    text, tokens, finished = await run(engine, prompt, params)
    assert finished.reason == "stop" and "3" in text and "4" not in text
    assert "".join(t.text for t in tokens) == text
    assert b"".join(t.token_bytes for t in tokens) == text.encode()


async def test_streamed_pieces_carry_exactly_the_tokens_of_their_text(engine):
    prompt = chat(engine, "Count from 1 to 10, separated by commas.")
    params = SamplingParams(temperature=0, max_tokens=40, stop=(", 6",), logprobs=True)
    pieces = [e async for e in engine.generate(prompt, params) if isinstance(e, Piece)]
    assert pieces
    for piece in pieces:
        assert "".join(t.text for t in piece.tokens) == piece.text, piece
    assert "6" not in "".join(p.text for p in pieces)


# -- min_tokens -----------------------------------------------------------------------------------
async def test_min_tokens_masks_the_end_of_turn(engine):
    prompt = chat(engine, "What is the capital of France? Answer in one word.")
    _, _, short = await run(engine, prompt, SamplingParams(temperature=0, max_tokens=64))
    assert short.reason == "stop" and short.completion_tokens < 20
    _, _, forced = await run(engine, prompt, SamplingParams(temperature=0, max_tokens=64, min_tokens=40))
    assert forced.completion_tokens >= 40


async def test_a_cancelled_generation_frees_its_slot_before_it_would_have_ended():
    """One slot; a generation forced to 1,500 tokens is closed after 5 pieces. A second request can only run
    once the slot is free, and the tokens decoded in all show the first never ran to its end."""
    engine = started(max_batch=1)
    try:
        prompt = chat(engine, "Write a very long story about the history of the world.")
        generation = engine.generate(prompt, SamplingParams(temperature=0.8, seed=3, max_tokens=1500, min_tokens=1500))
        pieces = 0
        async for event in generation:
            pieces += 1
            if pieces == 5:
                break
        await generation.aclose()
        text, _, finished = await asyncio.wait_for(run(engine, chat(engine, "Say hello."),
                                                       SamplingParams(temperature=0, max_tokens=8)), timeout=60)
        assert finished.completion_tokens >= 1
        assert engine.stats["tokens"] < len(prompt) + 1500, engine.stats
    finally:
        engine.close()


def test_min_tokens_with_a_grammar_is_refused_by_name():
    params = SamplingParams(grammar='root ::= "yes"', min_tokens=5)
    engine = LlamaEngine(MODEL, options())  # not loaded: the check is made before any llama.cpp call
    with pytest.raises(InvalidRequest) as raised:
        asyncio.run(anext(engine.generate([1, 2], params)))
    assert raised.value.param == "min_tokens"


# -- n choices ------------------------------------------------------------------------------------
async def choices(engine: LlamaEngine, prompt: list[int], params: SamplingParams, n: int) -> dict[int, tuple]:
    text: dict[int, str] = {i: "" for i in range(n)}
    finished: dict[int, Finished] = {}
    async for event in engine.generate(prompt, params, n=n):
        assert event.index not in finished, "an event after its choice finished"
        if isinstance(event, Piece):
            text[event.index] += event.text
        else:
            finished[event.index] = event
    assert sorted(finished) == list(range(n))
    return {i: (text[i], finished[i]) for i in range(n)}


async def test_n_choices_share_one_prefill_and_differ_by_seed(engine):
    prompt = chat(engine, "Invent a name for a cat. " + "Think about it carefully. " * 40)
    before = engine.stats["tokens"]
    sampled = await choices(engine, prompt, SamplingParams(temperature=1.0, seed=5, max_tokens=16), n=4)
    decoded = engine.stats["tokens"] - before
    generated = sum(f.completion_tokens for _, f in sampled.values())
    assert decoded <= len(prompt) + generated, "the prompt was prefilled more than once"
    assert len({t for t, _ in sampled.values()}) > 1, "seed + i should give different samples"
    for _, finished in sampled.values():
        assert finished.prompt_tokens == len(prompt)
    greedy = await choices(engine, prompt, SamplingParams(temperature=0, max_tokens=12), n=3)
    assert len({t for t, _ in greedy.values()}) == 1


async def test_choice_i_equals_one_request_with_seed_plus_i_when_batch_invariant():
    engine = started(kv_unified=False)
    try:
        prompt = chat(engine, "Describe a dragon.")
        params = SamplingParams(temperature=0.9, seed=100, max_tokens=24)
        together = await choices(engine, prompt, params, n=3)
        for i in range(3):
            alone, _, _ = await run(engine, prompt, SamplingParams(temperature=0.9, seed=100 + i, max_tokens=24))
            assert together[i][0] == alone, i
    finally:
        engine.close()


async def test_weights_kept_in_the_gguf_layout_answer_greedily(engine):
    """`repack: false` (llama-server's --no-repack) loads the weights without llama.cpp's extra buffer types (AMX,
    repacked AVX), for CPUs or VMs where those kernels misbehave; the model still answers."""
    plain = started(repack=False, max_batch=1)
    try:
        text, _, finished = await run(plain, chat(plain, "Name a colour."), SamplingParams(temperature=0, max_tokens=8))
    finally:
        plain.close()
    assert text.strip() and finished.completion_tokens > 0


async def test_n_larger_than_max_batch_is_invalid_and_closing_cancels_all(engine):
    with pytest.raises(InvalidRequest) as raised:
        await anext(engine.generate([1, 2, 3], SamplingParams(), n=5))
    assert raised.value.param == "n"
    prompt = chat(engine, "Write a long story.")
    generation = engine.generate(prompt, SamplingParams(temperature=0.7, seed=1, max_tokens=500, min_tokens=500), n=4)
    await anext(generation)
    await generation.aclose()
    # all four slots must be free again for a request that needs all four
    result = await asyncio.wait_for(choices(engine, chat(engine, "Say hi."), SamplingParams(max_tokens=4), n=4), 60)
    assert len(result) == 4


# -- lazy grammars --------------------------------------------------------------------------------
COUNT = "Count from 1 to 10, separated by commas."


async def test_a_lazy_grammar_lets_text_through_until_its_trigger(engine):
    """Free text until the trigger appears; from there on only the grammar: "3, 3, 3, 3" and the end."""
    prompt = chat(engine, COUNT)
    free, _, _ = await run(engine, prompt, SamplingParams(temperature=0, max_tokens=40))
    assert free.startswith("1, 2, 3, 4"), free
    grammar = 'root ::= "3, 3, 3, 3"'
    lazy, _, finished = await run(engine, prompt, SamplingParams(temperature=0, max_tokens=40, grammar=grammar,
                                                                 grammar_lazy=True, grammar_triggers=("3",)))
    assert lazy == "1, 2, 3, 3, 3, 3" and finished.reason == "stop", lazy
    eager, _, _ = await run(engine, prompt, SamplingParams(temperature=0, max_tokens=40, grammar=grammar))
    assert eager == "3, 3, 3, 3"


async def test_a_lazy_grammar_never_triggered_leaves_the_answer_free(engine):
    prompt = chat(engine, "Say hello.")
    free, _, _ = await run(engine, prompt, SamplingParams(temperature=0, max_tokens=16))
    lazy, _, _ = await run(engine, prompt, SamplingParams(temperature=0, max_tokens=16, grammar='root ::= "<tool_call>"',
                                                          grammar_lazy=True, grammar_triggers=("<tool_call>",)))
    assert lazy == free and "<tool_call>" not in lazy


@pytest.mark.parametrize(("params", "param"), [
    (SamplingParams(grammar_lazy=True, grammar_triggers=("x",)), "grammar"),
    (SamplingParams(grammar='root ::= "x"', grammar_lazy=True), "grammar_triggers"),
    (SamplingParams(grammar='root ::= "x"', grammar_triggers=("x",)), "grammar_lazy"),
    (SamplingParams(grammar='root ::= "x"', grammar_lazy=True, grammar_triggers=("(unclosed",)), "grammar_triggers"),
    (SamplingParams(grammar='root ::= "x"', grammar_lazy=True, grammar_triggers=('{"name"',)), "grammar_triggers"),
    (SamplingParams(grammar='root ::= "x"', grammar_lazy=True, grammar_triggers=("(?<=a)b",)), "grammar_triggers"),
])
def test_bad_lazy_grammar_settings_are_refused_before_llama_cpp_sees_them(params, param):
    """std::regex throws on what it cannot parse, and a C++ exception through ctypes ends the process."""
    engine = LlamaEngine(MODEL, options())
    with pytest.raises(InvalidRequest) as raised:
        asyncio.run(anext(engine.generate([1, 2], params)))
    assert raised.value.param == param


WEATHER_CALL = r'''root ::= "```json\n" ws "{" ws "\"name\"" ws ":" ws "\"get_weather\"" ws "," ws "\"arguments\"" ws ":" ws "{" ws "\"city\"" ws ":" ws string ws "}" ws "}" ws "```"
string ::= "\"" [^"\\\x00-\x1f]* "\""
ws ::= [ \t\n]{0,20}'''


async def test_a_lazy_tool_call_grammar_on_qwen_constrains_the_call_and_leaves_text_alone():
    """Qwen2.5-Coder-0.5B writes its calls as fenced JSON (it never uses the <tool_call> tag here) and invents
    functions: from the fence on, the grammar holds it to the offered one; a plain answer stays free."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    qwen = LlamaEngine(resolve_model_file("qwen2.5-coder-0.5b-instruct-q4_k_m", load_catalog()),
                       options(max_batch=2))
    qwen.load()
    try:
        tools = [{"type": "function", "function": {
            "name": "get_weather", "description": "The current weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
        bos, eos = qwen.bos_eos()
        formatter = Jinja2ChatFormatter(template=qwen.chat_template(), eos_token=eos, bos_token=bos)

        def ask(question: str) -> list[int]:
            prompt = formatter(messages=[{"role": "user", "content": question}], tools=tools).prompt
            return qwen.tokenize(prompt, add_special=False, parse_special=True)

        lazy = dict(grammar=WEATHER_CALL, grammar_lazy=True, grammar_triggers=("```json\n",))
        umbrella = ask("I am going to Rome tomorrow. Should I bring an umbrella? Think first, then call a tool.")
        free, _, _ = await run(qwen, umbrella, SamplingParams(temperature=0, max_tokens=80))
        assert free.startswith("```json\n") and '"get_weather"' not in free, free  # it makes a function up
        called, _, finished = await run(qwen, umbrella, SamplingParams(temperature=0, max_tokens=80, **lazy))
        assert finished.reason == "stop"
        call = json.loads(called.removeprefix("```json\n").removesuffix("```"))
        assert call == {"name": "get_weather", "arguments": {"city": "Rome"}}, called
        question = ask("Explain what a weather forecast is, in one sentence.")
        text, _, _ = await run(qwen, question, SamplingParams(temperature=0, max_tokens=60))
        constrained, _, _ = await run(qwen, question, SamplingParams(temperature=0, max_tokens=60, **lazy))
        assert constrained == text and "```" not in text
    finally:
        qwen.close()
