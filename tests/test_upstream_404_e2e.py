"""An upstream's 404 means the profile names a model or route it does not serve: never the client's 400.
A 413 is the client's: a 400, and the replica is not held to blame.

A Tier 2 pool of two replicas of the session's gateway (SmolLM2 as `tier:3`, attached by `url`), replica `a`
behind the fault-injecting proxy answering 404: every request is served by `b`, and `a` is ejected. A hosted
Tier 1 whose upstream answers 404 gives a 502 that names the profile's keys.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import ServerProcess
from tests.fault_proxy import Fault, FaultProxy

PROFILE = """devices: {{cpu: {{kind: cpu}}}}
tiers:
  1: {{runner: hosted, model: stub, base_url: "{proxy}/v1", api_key_env: null, max_attempts: 1}}
  2:
    runner: vllm
    model: "tier:3"
    ejection: {{after_failures: 1, cooldown_s: 60}}
    replicas:
      - {{name: a, url: "{proxy}/v1"}}
      - {{name: b, url: "{server}/v1"}}
"""


@pytest.fixture(scope="module")
def proxy(server):
    proxy = FaultProxy(server.base_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def gateway(proxy, server, tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream-404")
    (root / "profile.yaml").write_text(PROFILE.format(proxy=proxy.base_url, server=server.base_url))
    proc = ServerProcess("--profile", str(root / "profile.yaml"), log_path=root / "gateway.log")
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()


def ask(gateway, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 3, "temperature": 0}
    return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=60)


def test_a_replica_refusing_the_request_as_too_large_is_the_clients_400_and_not_ejected(gateway, proxy):
    """A 413 is the request's fault on every replica: the client hears it, and the replica keeps serving.
    Runs before the 404 test, which ejects replica a for the rest of the module."""
    proxy.plan[:] = [Fault.status(413)]
    answers = [ask(gateway, "tier:2") for _ in range(4)]
    refused = [a for a in answers if a.status_code != 200]
    assert len(refused) == 1 and refused[0].status_code == 400, [(a.status_code, a.text) for a in answers]
    assert "rejected the request" in refused[0].json()["error"]["message"]
    replicas = {r["name"]: r for r in httpx.get(f"{gateway.base_url}/ready").json()["tiers"]["2"]["replicas"]}
    assert replicas["a"]["state"] == "ready", replicas["a"]
    proxy.plan.clear()


def test_a_replica_answering_404_is_skipped_and_ejected_not_the_clients_fault(gateway, proxy):
    proxy.plan[:] = [Fault.status(404)] * 4
    answers = [ask(gateway, "tier:2") for _ in range(4)]
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert {a.headers["x-replica"] for a in answers} == {"b"}
    replicas = {r["name"]: r for r in httpx.get(f"{gateway.base_url}/ready").json()["tiers"]["2"]["replicas"]}
    assert replicas["a"]["state"] == "ejected" and "HTTP 404" in replicas["a"]["detail"], replicas["a"]
    proxy.plan.clear()


def test_a_hosted_404_is_a_502_naming_the_profile_keys(gateway, proxy):
    proxy.plan[:] = [Fault.status(404)]
    answer = ask(gateway, "tier:1")
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["code"] == "runner_failed" and "HTTP 404" in error["message"] and "base_url" in error["message"]
