"""Every request example in the README, as written there, against the real server (cpu-tier3, the shipped
routing table): each answers 200 within its feature's contract, and the triage example's repeat is a cache hit.

The examples are read out of the README's code blocks, so an edit of the README is an edit of this test.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import httpx
import jsonschema
import pytest

from tests.conftest import REPO, ServerProcess
from tiers.gates import normalize
from tiers.routing import load_routing

README_URL = "http://127.0.0.1:8080"
BLOCK = re.compile(r"```(?P<lang>sh|python)\n(?P<body>.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(m["lang"], m["body"]) for m in BLOCK.finditer(text)]


def curl_requests(body: str) -> list[dict]:
    """Each `curl` command of a shell block: its URL, headers and JSON body (comment lines dropped)."""
    lines = [line for line in body.splitlines() if not line.lstrip().startswith("#")]
    found = []
    for command in re.split(r"\n(?=curl )", "\n".join(lines).replace("\\\n", " ")):
        if not command.startswith("curl "):
            continue
        words = shlex.split(command)
        url = next(w for w in words if w.startswith("http"))
        headers = dict(h.split(": ", 1) for flag, h in zip(words, words[1:]) if flag == "-H")
        data = next(d for flag, d in zip(words, words[1:]) if flag == "-d")
        found.append({"url": url, "headers": headers, "body": json.loads(data)})
    return found


def within_contract(model: str, response: httpx.Response) -> None:
    """A feature's answer is one of its gate's labels, or JSON valid under its gate's schema."""
    assert response.status_code == 200, response.text
    message = response.json()["choices"][0]["message"]
    if not model.startswith("feature:"):
        assert message.get("content") or message.get("tool_calls"), response.text
        return
    gate = load_routing().features[model.removeprefix("feature:")].gate
    if gate and gate.choices:
        assert normalize(message["content"]) in {normalize(c) for c in gate.choices}, message["content"]
    if gate and gate.json_schema:
        jsonschema.validate(json.loads(message["content"]), gate.json_schema)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ServerProcess:
    proc = ServerProcess(log_path=tmp_path_factory.mktemp("readme") / "server.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def test_the_readme_has_the_quick_start_examples():
    blocks = readme_blocks()
    requests = [r for lang, body in blocks if lang == "sh" for r in curl_requests(body)]
    models = [r["body"].get("model") for r in requests]
    assert "feature:ticket-triage" in models
    assert any("/v1/feedback" in r["url"] for r in requests)
    assert any("OpenAI(" in body for lang, body in blocks if lang == "python")
    text = (REPO / "README.md").read_text(encoding="utf-8")
    quick_start = text[text.index("## Quick start"):text.index("## Examples")]
    assert quick_start.index("make serve-tiers") < quick_start.index("feature:ticket-triage") < \
        quick_start.index("make demo")


def test_every_readme_request_answers_within_its_contract(server):
    last_request_id = None
    for lang, body in readme_blocks():
        if lang == "python" and "OpenAI(" in body:
            code = body.replace(README_URL, server.base_url).replace("print(", "printed.append(")
            printed: list = []
            exec(compile(code, "README.md", "exec"), {"printed": printed})  # noqa: S102 - the README's own code
            assert printed and printed[0], "the README's Python example printed nothing"
            continue
        for example in curl_requests(body) if lang == "sh" else []:
            url = example["url"].replace(README_URL, server.base_url)
            payload = json.loads(json.dumps(example["body"]).replace('"req_..."', json.dumps(last_request_id)))
            started = time.perf_counter()
            response = httpx.post(url, json=payload, headers=example["headers"], timeout=120)
            elapsed = time.perf_counter() - started
            if url.endswith("/v1/feedback"):
                assert response.status_code == 200 and response.json()["status"] == "recorded", response.text
                continue
            within_contract(payload["model"], response)
            if payload.get("tool_choice") == "required":  # the README's tool call: a call, whose arguments parse
                assert response.json()["choices"][0]["finish_reason"] == "tool_calls", response.text
                json.loads(response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
            last_request_id = response.headers["x-request-id"]
            if payload["model"] == "feature:ticket-triage":
                assert json.loads(response.json()["choices"][0]["message"]["content"]) == "billing"
                assert response.headers["x-tier"] == "3" and response.headers["x-gate"] == "choices:ok"
                print(f"README triage example: {elapsed * 1000:.0f} ms, {response.headers['server-timing']}")
                assert_repeat_is_a_cache_hit(url, payload)


def assert_repeat_is_a_cache_hit(url: str, payload: dict) -> None:
    """The answer is stored after it is sent; the repeat, a moment later, is answered from the cache."""
    deadline = time.monotonic() + 20
    while True:
        repeat = httpx.post(url, json=payload, timeout=120)
        assert repeat.status_code == 200
        if repeat.headers["x-cache"] == "hit" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert repeat.headers["x-cache"] == "hit" and repeat.headers["x-cost-usd"] == "0.00000000"
    assert json.loads(repeat.json()["choices"][0]["message"]["content"]) == "billing"


def test_the_readme_requests_parse(tmp_path):
    """The parser itself: a doctored block with two curls and a comment yields both, comment-free."""
    block = ("curl -s http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\\n"
             "  -d '{\"model\": \"tier:3\", \"messages\": []}'\n# {\"not\": \"a request\"}\n"
             "curl -s http://127.0.0.1:8080/v1/feedback -d '{\"request_id\": \"req_...\"}'\n")
    found = curl_requests(block)
    assert [r["body"] for r in found] == [{"model": "tier:3", "messages": []}, {"request_id": "req_..."}]
    assert found[0]["headers"] == {"content-type": "application/json"}
    assert Path(REPO / "README.md").exists()
