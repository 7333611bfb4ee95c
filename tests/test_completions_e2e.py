"""POST /v1/completions (legacy text completion) through the real server and SmolLM2, with the official openai SDK;
bodies and chunks validated against OpenAI's OpenAPI document."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.openai_schema import validate
from tests.ledger_reader import ledger_rows

PROMPT = "The capital of France is"


def post(server, body) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)


def validate_chunk(chunk: dict) -> None:
    """The document gives stream chunks the answer's shape, finish_reason required; OpenAI's own streams (and ours)
    send null until the last chunk, so only that field is relaxed here."""
    patched = {**chunk, "choices": [{**c, "finish_reason": c["finish_reason"] or "stop"} for c in chunk["choices"]]}
    validate(patched, "CreateCompletionResponse")


def test_a_prompt_is_completed_as_plain_text_with_usage_and_a_ledger_row(openai_client, server):
    raw = openai_client.completions.with_raw_response.create(model="tier:3", prompt=PROMPT, max_tokens=8,
                                                             temperature=0)
    validate(json.loads(raw.text), "CreateCompletionResponse")
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert "Paris" in completion.choices[0].text
    # no chat template: the prompt is its own handful of tokens, not a system prompt and role markers around it
    assert 3 <= completion.usage.prompt_tokens <= 10, completion.usage
    assert completion.usage.completion_tokens <= 8
    row = next(r for r in ledger_rows(server) if r["request_id"] == raw.headers["x-request-id"])
    assert row["api"] == "completions" and row["completion_tokens"] == completion.usage.completion_tokens


def test_a_list_of_prompts_gets_one_choice_each_and_summed_usage(openai_client):
    one = openai_client.completions.create(model="tier:3", prompt="1, 2, 3,", max_tokens=6, temperature=0)
    both = openai_client.completions.create(model="tier:3", prompt=[PROMPT, "1, 2, 3,"], max_tokens=6, temperature=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.choices[1].text == one.choices[0].text
    assert both.usage.prompt_tokens > one.usage.prompt_tokens


def test_stop_max_tokens_and_seed(openai_client):
    cut = openai_client.completions.create(model="tier:3", prompt="1, 2, 3,", max_tokens=3, temperature=0)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 3
    stopped = openai_client.completions.create(model="tier:3", prompt="1, 2, 3,", max_tokens=20, temperature=0,
                                               stop=["6"])
    assert stopped.choices[0].finish_reason == "stop" and "6" not in stopped.choices[0].text
    assert "5" in stopped.choices[0].text
    seeded = [openai_client.completions.create(model="tier:3", prompt="Once upon a time", max_tokens=16,
                                               temperature=1.0, seed=7).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]


def test_integer_logprobs_give_tokens_alternatives_and_offsets(openai_client):
    completion = openai_client.completions.create(model="tier:3", prompt=PROMPT, max_tokens=5, temperature=0,
                                                  logprobs=2)
    choice = completion.choices[0]
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == completion.usage.completion_tokens
    assert "".join(lp.tokens) == choice.text
    assert all(1 <= len(top) <= 2 for top in lp.top_logprobs) and all(v <= 0 for v in lp.token_logprobs)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_streaming_gives_the_same_text_chunks_usage_and_done(openai_client, server):
    whole = openai_client.completions.create(model="tier:3", prompt=PROMPT, max_tokens=10, temperature=0)
    body = {"model": "tier:3", "prompt": PROMPT, "max_tokens": 10, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        validate_chunk(chunk)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == whole.choices[0].text
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]] == \
        [whole.choices[0].finish_reason]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == whole.usage.completion_tokens
    sdk = "".join(c.choices[0].text for c in openai_client.completions.create(
        model="tier:3", prompt=PROMPT, max_tokens=10, temperature=0, stream=True) if c.choices)
    assert sdk == whole.choices[0].text


GOOD = {"model": "tier:3", "prompt": PROMPT, "max_tokens": 4}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({**GOOD, "echo": True}, 400, "echo"),
    ({**GOOD, "prompt": [1, 2, 3]}, 400, "prompt"),
    ({**GOOD, "prompt": []}, 400, "prompt"),
    ({**GOOD, "prompt": ["a", "b"], "stream": True}, 400, "prompt"),
    ({**GOOD, "suffix": "!"}, 400, "suffix"),
    ({**GOOD, "best_of": 2}, 400, "best_of"),
    ({**GOOD, "logprobs": 6}, 400, "logprobs"),
    ({**GOOD, "max_tokens": 5000}, 400, "messages"),
    ({"model": "tier:3"}, 400, "prompt"),
    ({**GOOD, "model": "feature:no-such-feature"}, 404, "model"),
    ({**GOOD, "model": "tier:2"}, 503, None),
])
def test_bad_input_is_a_clear_openai_error_and_the_server_keeps_serving(server, body, status, param):
    response = post(server, body)
    assert response.status_code == status, response.text
    payload = response.json()
    validate(payload, "ErrorResponse")
    assert payload["error"]["param"] == param and payload["error"]["message"]
    assert post(server, GOOD).json()["choices"][0]["text"]


@pytest.fixture(scope="module")
def hosted_gateway(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("completions-hosted")
    (root / "profile.yaml").write_text(
        f'tiers:\n  3: {{runner: hosted, model: "tier:3", base_url: "{server.base_url}/v1", api_key_env: null}}\n')
    proc = ServerProcess("--profile", str(root / "profile.yaml"), log_path=root / "server.log")
    proc.wait_ready()
    yield proc
    proc.stop()


def test_a_hosted_tier_refuses_a_prompt_by_name(hosted_gateway):
    response = post(hosted_gateway, GOOD)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt" and "does not serve plain text completions" in error["message"]
