"""DirectRoute against FastAPI's own solver: the same endpoint served both ways on 127.0.0.1 answers every
request, good or bad, with the same status and the same body."""

from __future__ import annotations

import json
import threading
import time
from typing import Annotated

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, FastAPI, Header, Request
from fastapi.responses import JSONResponse

from runners.wire.openai_chat_protocol import ChatCompletionRequest
from tests.conftest import free_port
from tiers.api.deps import Client
from tiers.api.direct_route import DirectRoute
from tiers.api.errors import install_error_handlers
from tiers.auth import Access, ClientKey, KeysFile, hash_key

SECRET = "sk-direct-route-test-key-0001"
GOOD = {"model": "tier:3", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


async def echo(body: ChatCompletionRequest, request: Request, key: Client,
               x_feature: Annotated[str | None, Header()] = None) -> JSONResponse:
    return JSONResponse({"model": body.model, "max_tokens": body.max_tokens, "key": key and key.id,
                         "feature": x_feature})


@pytest.fixture(scope="module")
def base_url():
    app = FastAPI()
    install_error_handlers(app)
    app.state.access = Access(KeysFile(keys=[ClientKey(id="tests", sha256=hash_key(SECRET))]))
    direct, solved = APIRouter(route_class=DirectRoute), APIRouter()
    direct.post("/direct")(echo)
    solved.post("/solved")(echo)
    app.include_router(direct)
    app.include_router(solved)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the test app did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


BEARER = {"authorization": f"Bearer {SECRET}", "content-type": "application/json"}
CASES = {
    "good": (json.dumps(GOOD), BEARER),
    "x-api-key and a feature": (json.dumps(GOOD), {"x-api-key": SECRET, "x-feature": "triage",
                                                   "content-type": "application/json"}),
    "charset in the content type": (json.dumps(GOOD), {**BEARER, "content-type": "application/json; charset=utf-8"}),
    "a +json content type": (json.dumps(GOOD), {**BEARER, "content-type": "application/vnd.api+json"}),
    "no key": (json.dumps(GOOD), {"content-type": "application/json"}),
    "a wrong key": (json.dumps(GOOD), {**BEARER, "authorization": "Bearer sk-wrong"}),
    "no key and a bad body": ("{", {"content-type": "application/json"}),
    "empty body": ("", BEARER),
    "invalid JSON": ('{"model": ', BEARER),
    "no content type": (json.dumps(GOOD), {"authorization": f"Bearer {SECRET}"}),
    "a text content type": (json.dumps(GOOD), {**BEARER, "content-type": "text/plain"}),
    "a missing field": (json.dumps({"model": "tier:3"}), BEARER),
    "an unknown field": (json.dumps({**GOOD, "frobnicate": 1}), BEARER),
    "a wrong type": (json.dumps({**GOOD, "max_tokens": "many"}), BEARER),
    "a nested error": (json.dumps({**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}), BEARER),
    "a JSON string": ('"hello"', BEARER),
}


@pytest.mark.parametrize("case", CASES)
def test_direct_route_answers_as_fastapi_does(base_url, case):
    content, headers = CASES[case]
    direct = httpx.post(f"{base_url}/direct", content=content, headers=headers, timeout=10)
    solved = httpx.post(f"{base_url}/solved", content=content, headers=headers, timeout=10)
    assert (direct.status_code, direct.json()) == (solved.status_code, solved.json())
    assert direct.status_code in (200, 400, 401), direct.text


def test_the_good_request_reaches_the_endpoint_with_its_arguments(base_url):
    answer = httpx.post(f"{base_url}/direct", content=CASES["x-api-key and a feature"][0],
                        headers=CASES["x-api-key and a feature"][1], timeout=10)
    assert answer.json() == {"model": "tier:3", "max_tokens": 2, "key": "tests", "feature": "triage"}


def test_an_endpoint_with_other_arguments_is_refused_when_routed():
    async def other(body: ChatCompletionRequest, request: Request) -> JSONResponse:
        return JSONResponse({})

    with pytest.raises(TypeError, match="must take exactly"):
        APIRouter(route_class=DirectRoute).post("/other")(other)


def test_an_endpoint_not_returning_a_response_is_refused_when_routed():
    async def unannotated(body: ChatCompletionRequest, request: Request, key: Client,
                          x_feature: Annotated[str | None, Header()] = None):
        return {"model": body.model}  # APIRoute would encode this; DirectRoute would send it as it is

    with pytest.raises(TypeError, match="must be annotated `-> Response`"):
        APIRouter(route_class=DirectRoute).post("/unannotated")(unannotated)
