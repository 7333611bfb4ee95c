"""Every bad input gets the right status and an OpenAI-style error, and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.openai_schema import validate

GOOD = {"model": "tier:3", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 3, "temperature": 0}


def post(server, body=None, *, content=None, headers=None) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, content=content, headers=headers,
                      timeout=60)


def assert_still_serving(server) -> None:
    response = post(server, GOOD)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "tier:3"}, 400, "messages"),
        ({**GOOD, "messages": "hello"}, 400, "messages"),
        ({**GOOD, "temperature": "hot"}, 400, "temperature"),
        ({**GOOD, "temperature": 3}, 400, "temperature"),
        ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
        ({**GOOD, "n": 9}, 400, "n"),
        ({**GOOD, "tools": [{"type": "function"}]}, 400, "tools.0.function"),
        ({**GOOD, "tools": [{"type": "function", "function": {"name": '"('}}]}, 400, "tools.0.function.name"),
        ({**GOOD, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
        ({**GOOD, "response_format": {"type": "json_schema"}}, 400, "response_format"),
        ({**GOOD, "max_tokens": 5000}, 400, "messages"),
        ({**GOOD, "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "messages"),
        ({**GOOD, "model": "feature:no-such-feature"}, 404, "model"),
        ({**GOOD, "model": "tier:9"}, 404, "model"),
        ({**GOOD, "model": "feature:contract-review"}, 503, None),
        ({**GOOD, "model": "tier:2"}, 503, None),
    ],
)
def test_bad_request_gets_openai_error_and_server_keeps_serving(server, body, status, param):
    response = post(server, body)
    assert response.status_code == status, response.text
    payload = response.json()
    validate(payload, "ErrorResponse")
    assert payload["error"]["param"] == param
    assert payload["error"]["message"]
    assert response.headers["x-request-id"].startswith("req_")
    assert_still_serving(server)


def test_prompt_longer_than_context_is_context_length_exceeded(server):
    response = post(server, {**GOOD, "messages": [{"role": "user", "content": "word " * 3000}]})
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in error["message"]


def test_unserved_tier_names_the_tier_and_the_profile_key(server):
    error = post(server, {**GOOD, "model": "feature:contract-review"}).json()["error"]
    assert "tier 1 is not served by profile 'cpu-tier3'" in error["message"]
    assert "tiers.1" in error["message"]


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"\xff\xfe\x00garbage", 400),
        (b"[1, 2, 3]", 400),
        (b"", 400),
    ],
)
def test_malformed_bodies_are_400(server, content, status):
    response = post(server, content=content, headers={"content-type": "application/json"})
    assert response.status_code == status
    validate(response.json(), "ErrorResponse")
    assert_still_serving(server)


def test_body_over_the_limit_is_413(server):
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = post(server, big)
    assert response.status_code == 413
    validate(response.json(), "ErrorResponse")
    assert "65536 bytes" in response.json()["error"]["message"]
    assert_still_serving(server)


def test_chunked_body_over_the_limit_is_413(server):
    def chunks():
        yield b'{"model": "tier:3", "messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 8192
        yield b'"}]}'

    response = post(server, content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert_still_serving(server)


def test_streaming_request_errors_before_the_stream_starts(server):
    body = {**GOOD, "stream": True, "messages": [{"role": "user", "content": "word " * 3000}]}
    response = post(server, body)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_unknown_route_is_an_openai_style_404(server):
    response = httpx.get(f"{server.base_url}/v1/nothing-here")
    assert response.status_code == 404
    validate(response.json(), "ErrorResponse")


def test_feature_header_routes_and_conflicts_are_rejected(server):
    ok = post(server, {**GOOD, "model": "anything", "max_tokens": 12}, headers={"x-feature": "ticket-triage"})
    assert ok.status_code == 200 and ok.headers["x-feature"] == "feature:ticket-triage"
    clash = post(server, {**GOOD, "model": "feature:ticket-triage"}, headers={"x-feature": "contract-review"})
    assert clash.status_code == 400
    assert json.loads(clash.text)["error"]["param"] == "model"


def nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


@pytest.mark.parametrize(("schema", "fragment"), [
    (nested_schema(40), "nests deeper than 24"),
    ({"type": "string", "enum": [f"v{i}" for i in range(5000)]}, "more than 2000 values"),
])
def test_pathological_json_schema_is_a_clean_400(server, schema, fragment):
    body = {**GOOD, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}
    response = post(server, body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]["message"]
    assert_still_serving(server)


def test_too_many_messages_is_a_clean_400(server):
    body = {**GOOD, "messages": [{"role": "user", "content": "hi"}] * 300}
    response = post(server, body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"
    assert "256 allowed" in response.json()["error"]["message"]


def test_client_disconnecting_mid_stream_leaves_the_server_serving(server):
    body = {**GOOD, "max_tokens": 200, "stream": True, "messages": [{"role": "user", "content": "Tell a long story."}]}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break  # leave after the first event
    assert_still_serving(server)


def test_a_client_gone_before_the_first_event_still_leaves_a_row(server):
    """The stream's first delta is read before the response starts; a client that has already left by then
    must still leave its ledger row (and settle its budget reservation), not a never-started generator."""
    import socket
    import time

    import sqlalchemy as sa

    from tiers.ledger import schema

    def disconnected_rows() -> int:
        httpx.get(f"{server.base_url}/v1/audit", timeout=30)  # flushes the spool into the database
        engine = sa.create_engine(f"sqlite:///{server.data_dir / 'ledger.db'}")
        with engine.connect() as conn:
            count = conn.execute(sa.select(sa.func.count()).select_from(schema.attempts)
                                 .where(schema.attempts.c.error_type == "client_disconnected")).scalar()
        engine.dispose()
        return count

    before = disconnected_rows()
    body = json.dumps({**GOOD, "max_tokens": 64, "stream": True}).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head + body)  # and leave at once, before any byte of the answer
    deadline = time.monotonic() + 30
    while disconnected_rows() < before + 5:
        assert time.monotonic() < deadline, f"{disconnected_rows() - before} of 5 left rows"
        time.sleep(0.5)
    assert_still_serving(server)
