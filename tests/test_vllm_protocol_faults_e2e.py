"""The vLLM runner's stream handling against a real OpenAI-protocol server behind the fault-injecting proxy.

The runner is attached by URL (`runner: vllm, url: ...`) to FaultProxy in front of the session's gateway,
which serves SmolLM2 as `tier:3`; the proxy ends a stream early, or answers with an empty one.
"""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.fault_proxy import Fault, FaultProxy


@pytest.fixture(scope="module")
def proxy(server):
    proxy = FaultProxy(server.base_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def gateway(proxy, tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-faults")
    (root / "profile.yaml").write_text(f'tiers:\n  2: {{runner: vllm, model: "tier:3", url: "{proxy.base_url}/v1"}}\n')
    proc = ServerProcess("--profile", str(root / "profile.yaml"), log_path=root / "gateway.log")
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()


def stream(gateway) -> tuple[int, list[str]]:
    body = {"model": "tier:2", "messages": [{"role": "user", "content": "Count from 1 to 5."}], "temperature": 0,
            "max_tokens": 16, "stream": True}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        if response.status_code != 200:
            return response.status_code, [response.read().decode()]
        return 200, [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_a_stream_that_ends_without_done_is_an_error_not_a_short_answer(gateway, proxy):
    proxy.plan[:] = [Fault.no_done()]
    status, events = stream(gateway)
    assert status == 200 and events[-1] != "[DONE]"
    error = json.loads(events[-1])["error"]
    assert error["code"] == "runner_failed" and "without [DONE]" in error["message"] and "tier 2" in error["message"]


def test_an_empty_stream_is_a_clean_502(gateway, proxy):
    proxy.plan[:] = [Fault.empty_stream()]
    assert httpx.get(f"{proxy.base_url}/health").status_code == 200  # as the runner's own check may, meanwhile
    status, body = stream(gateway)
    assert status == 502
    assert json.loads(body[0])["error"]["code"] == "runner_failed"
    proxy.plan.clear()
    status, events = stream(gateway)
    assert status == 200 and events[-1] == "[DONE]"  # and the tier keeps serving
