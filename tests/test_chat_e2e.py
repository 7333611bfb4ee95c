"""The unified endpoint with the real SmolLM2 model, driven by the official openai SDK."""

from __future__ import annotations

import json
import time

import httpx
import jsonschema

from tests.openai_schema import validate

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


def test_non_streaming_completion_matches_openai_schema(openai_client):
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tier:3",
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        temperature=0,
        max_tokens=16,
    )
    assert raw.headers["x-tier"] == "3"
    assert raw.headers["x-model"] == "smollm2-135m-instruct-q4_1"
    assert raw.headers["x-request-id"].startswith("req_")
    validate(json.loads(raw.text), "CreateChatCompletionResponse")
    completion = raw.parse()
    assert "Paris" in completion.choices[0].message.content
    assert completion.usage.prompt_tokens > 10
    assert 0 < completion.usage.completion_tokens <= 16
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_streaming_sends_chunks_usage_and_done(server):
    body = {
        "model": "tier:3",
        "messages": [{"role": "user", "content": "Count from 1 to 5."}],
        "temperature": 0,
        "max_tokens": 24,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-tier"] == "3"
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate(chunk, "CreateChatCompletionStreamResponse")
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "1" in text and "2" in text
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish in (["stop"], ["length"])
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert usage["completion_tokens"] <= 24 and usage["prompt_tokens"] > 0


def test_streaming_with_the_sdk_gives_the_same_text_as_non_streaming(openai_client):
    kwargs = dict(model="tier:3", messages=[{"role": "user", "content": "Name three colours."}], temperature=0,
                  max_tokens=20)
    whole = openai_client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(stream=True, **kwargs) if c.choices
    )
    assert streamed == whole


def test_json_schema_output_is_valid_json_matching_the_schema(openai_client):
    completion = openai_client.chat.completions.create(
        model="tier:3",
        messages=[{"role": "user", "content": "Describe a person called Ada who is 36, as JSON."}],
        temperature=0,
        max_tokens=60,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
    )
    value = json.loads(completion.choices[0].message.content)
    jsonschema.validate(value, PERSON)


def test_json_object_mode_returns_an_object(openai_client):
    completion = openai_client.chat.completions.create(
        model="tier:3",
        messages=[{"role": "user", "content": 'Return {"colour": ...} with the colour of the sky.'}],
        temperature=0,
        max_tokens=100,
        response_format={"type": "json_object"},
    )
    assert completion.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(completion.choices[0].message.content), dict)


def test_logprobs_cover_every_token(openai_client):
    completion = openai_client.chat.completions.create(
        model="tier:3", messages=[{"role": "user", "content": "Say hello."}], temperature=0, max_tokens=8,
        logprobs=True, top_logprobs=3,
    )
    content = completion.choices[0].logprobs.content
    assert "".join(t.token for t in content) == completion.choices[0].message.content
    for token in content:
        assert token.logprob <= 0
        assert len(token.top_logprobs) == 3
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
    # greedy decoding picks the most likely token
    assert content[0].token == content[0].top_logprobs[0].token


def test_stop_sequence_ends_the_answer_before_it(openai_client):
    completion = openai_client.chat.completions.create(
        model="tier:3", messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        temperature=0, max_tokens=40, stop=["4"],
    )
    text = completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert "3" in text and "4" not in text


def test_seed_makes_sampling_repeatable(openai_client):
    kwargs = dict(model="tier:3", messages=[{"role": "user", "content": "Invent a name for a cat."}],
                  temperature=1.0, top_p=0.9, max_tokens=16)
    first = openai_client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    again = openai_client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    others = {openai_client.chat.completions.create(seed=s, **kwargs).choices[0].message.content for s in (1, 2, 3)}
    assert first == again
    assert len(others | {first}) > 1


def test_models_lists_features_and_tiers(openai_client, server):
    ids = [m.id for m in openai_client.models.list()]
    assert "feature:ticket-triage" in ids and "feature:contract-review" in ids
    assert {"tier:1", "tier:2", "tier:3"} <= set(ids)
    validate(httpx.get(f"{server.base_url}/v1/models").json(), "ListModelsResponse")


def test_health_and_ready_report_each_tier(server):
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.base_url}/ready")
    assert ready.status_code == 200
    tiers = ready.json()["tiers"]
    assert tiers["3"]["state"] == "ready" and tiers["3"]["model"] == "smollm2-135m-instruct-q4_1"
    assert tiers["1"]["state"] == "not_configured"


def test_request_log_has_one_line_per_request_without_prompt_text(openai_client, server):
    secret_prompt = "zebra-banana-7781 what is this?"
    raw = openai_client.chat.completions.with_raw_response.create(
        model="tier:3", messages=[{"role": "user", "content": secret_prompt}], max_tokens=4, temperature=0)
    request_id = raw.headers["x-request-id"]
    deadline = time.monotonic() + 5  # the line is written when the response has been sent
    while not (lines := [line for line in server.output().splitlines() if request_id in line]):
        assert time.monotonic() < deadline, "no log line for the request"
        time.sleep(0.05)
    assert len(lines) == 1
    record = json.loads(lines[0].split("tier_runner.requests ", 1)[1])
    assert record["status"] == 200 and record["tier"] == 3 and record["completion_tokens"] <= 4
    assert 0 < record["runner_ms"] < record["ms"]
    assert "zebra-banana" not in server.output()


def test_server_timing_splits_gateway_time_from_runner_time(server):
    response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
        "model": "tier:3", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 2, "temperature": 0})
    assert response.status_code == 200
    timings = dict(part.strip().split(";dur=") for part in response.headers["server-timing"].split(","))
    gateway_ms, runner_ms = float(timings["gateway"]), float(timings["runner"])
    assert runner_ms > 0 and gateway_ms > 0
    assert gateway_ms + runner_ms < response.elapsed.total_seconds() * 1000  # both inside what the client waited
