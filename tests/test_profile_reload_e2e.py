"""A promoted model goes live without a restart: editing a tier's placement swaps its runner."""

from __future__ import annotations

import time

import httpx

from tests.conftest import ServerProcess

PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 2}
"""


def ask(server) -> httpx.Response:
    body = {"model": "tier:3", "messages": [{"role": "user", "content": "Say OK."}], "temperature": 0, "max_tokens": 3}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)


def test_profile_edit_swaps_the_tier_runner_and_a_broken_edit_is_rejected(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(PROFILE)
    server = ServerProcess("--profile", str(profile), log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        assert ask(server).headers["x-model"] == "smollm2-135m-instruct-q4_1"

        profile.write_text(PROFILE.replace("max_batch: 2", "max_batch: two"))  # broken: rejected
        time.sleep(2.5)
        still = ask(server)
        assert still.status_code == 200 and still.headers["x-model"] == "smollm2-135m-instruct-q4_1"
        assert "profile reload rejected" in server.output()

        profile.write_text(PROFILE.replace("smollm2-135m-instruct-q4_1", "qwen2.5-coder-0.5b-instruct-q4_k_m"))
        deadline = time.monotonic() + 120
        while (model := ask(server).headers["x-model"]) != "qwen2.5-coder-0.5b-instruct-q4_k_m":
            assert time.monotonic() < deadline, model
            time.sleep(0.5)
        ready = httpx.get(f"{server.base_url}/ready").json()
        assert ready["tiers"]["3"]["model"] == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    finally:
        server.stop()
