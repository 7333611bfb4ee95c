"""Secrets never reach logs, errors or /ready: a key pasted where a name belongs, a raw key in a keys file,
vLLM's command line and output, a provider's partly masked echo. Through the real CLI, server and upstreams."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from hardware.redact import MIN_RUN, redact, redact_argv
from tests.conftest import REPO, ServerProcess, free_port

KEY = "sk-proj-Zq81mWv4TnX0pLr7Ke2Yb9Hs3Dc6Fa5Gu"


def leaks(text: str, secret: str = KEY) -> list[str]:
    """Every run of MIN_RUN characters of the secret that appears in the text."""
    return sorted({secret[i:i + MIN_RUN] for i in range(len(secret) - MIN_RUN + 1) if secret[i:i + MIN_RUN] in text})


def serve(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tiers", "serve", "--port", str(free_port()), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


# -- redaction ------------------------------------------------------------------------------------
@pytest.mark.parametrize("echo", [
    f"Incorrect API key provided: {KEY}.",
    f"Incorrect API key provided: {KEY[:12]}{'*' * 24}{KEY[-4:]}.",  # OpenAI's partly masked echo
    f"key={KEY[3:20]}... (truncated)",
    f"{KEY[:10]}****{KEY[15:30]}",
])
def test_any_run_of_eight_characters_of_the_key_is_redacted(echo):
    scrubbed = redact(echo, [KEY])
    assert leaks(scrubbed) == [] and "[redacted]" in scrubbed


def test_text_without_the_key_and_short_keys_are_handled():
    assert redact("nothing secret here, sk-proj", [KEY]) == "nothing secret here, sk-proj"  # 7 characters
    assert redact("a short pin 1234 here", ["1234"]) == "a short pin [redacted] here"
    assert redact("anything", [None, ""]) == "anything"


def test_command_lines_lose_the_values_of_secret_flags():
    argv = ["python", "-m", "vllm", "--api-key", KEY, "--hf-token=hf_abcdefgh", "--max-num-batched-tokens", "512",
            "--enable-auth", "--port", "8000"]
    assert redact_argv(argv) == ["python", "-m", "vllm", "--api-key", "[redacted]", "--hf-token=[redacted]",
                                 "--max-num-batched-tokens", "512", "--enable-auth", "--port", "8000"]


# -- config load ----------------------------------------------------------------------------------
def test_a_key_pasted_as_api_key_env_is_refused_at_load_and_never_echoed(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"tiers:\n  1: {{runner: hosted, provider: openai, model: gpt-x, api_key_env: {KEY}}}\n")
    result = serve("--profile", str(profile))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "tiers.1" in result.stderr and "api_key_env" in result.stderr and "name of an environment variable" in (
        result.stderr)
    assert leaks(result.stdout + result.stderr) == []


def test_a_raw_key_pasted_into_a_keys_file_never_reaches_stderr(tmp_path):
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"admin_sha256: {KEY}\nkeys:\n  - {{id: app, sha256: {KEY}x}}\n  - {{sha256: {KEY}y}}\n")
    result = serve("--profile", "cpu-tier3", "--keys", str(keys), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "admin_sha256" in result.stderr and "keys.0.sha256" in result.stderr and "keys.1.id" in result.stderr
    assert leaks(result.stdout + result.stderr) == []


# -- vLLM's command line and output ---------------------------------------------------------------
FAKE_VLLM = """#!/bin/sh
# Stands in for vLLM's interpreter: prints what vLLM prints at start (its arguments, the key among them),
# a prompt at INFO, a warning, then waits as a server would.
key=""; previous=""
for arg in "$@"; do [ "$previous" = "--api-key" ] && key="$arg"; previous="$arg"; done
echo "INFO 01-01 00:00:00 [api_server.py:1] vLLM API server version 0.0.0"
echo "INFO 01-01 00:00:00 [utils.py:2] non-default args: {'api_key': ['$key']}"
echo "INFO 01-01 00:00:01 [logger.py:3] Received request chatcmpl-1: prompt: 'my private prompt text'"
echo "WARNING 01-01 00:00:02 [config.py:4] this is a vLLM warning line"
exec sleep 600
"""


# SmolLM2-135M's shape, as in its config.json: what the gateway reads of a transformers folder before starting vLLM.
SMOLLM2_CONFIG = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_attention_heads": 9,
                  "num_key_value_heads": 3, "num_hidden_layers": 30, "max_position_embeddings": 8192}


def test_vllm_command_line_and_output_are_redacted_and_relayed_at_debug(tmp_path):
    fake = tmp_path / "vllm-python"
    fake.write_text(FAKE_VLLM)
    fake.chmod(0o755)
    profile = tmp_path / "profile.yaml"
    model = tmp_path / "model"  # the fake vLLM loads nothing: the gateway reads only config.json (shape, context)
    model.mkdir()
    (model / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    profile.write_text(f"tiers:\n  2: {{runner: vllm, model: {model}, python: {fake}, startup_timeout_s: 600,"
                       f" extra_args: [--api-key, {KEY}]}}\n")
    server = ServerProcess("--profile", str(profile), "--data-dir", str(tmp_path / "data"),
                           log_path=tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 60
        while "vLLM warning line" not in server.output():
            assert server.proc.poll() is None and time.monotonic() < deadline, server.output()[-3000:]
            time.sleep(0.2)
        while True:  # vLLM (still starting) does not hold /ready back; the rest of the start may
            try:
                ready = httpx.get(f"{server.base_url}/ready", timeout=5).text
                break
            except httpx.ConnectError:
                assert server.proc.poll() is None and time.monotonic() < deadline + 120, server.output()[-3000:]
                time.sleep(0.2)
    finally:
        server.stop()
    log = server.output()
    assert "started vLLM" in log and "--api-key [redacted]" in log
    assert leaks(log + ready) == []
    assert "my private prompt text" not in log  # INFO lines of vLLM go to DEBUG: a prompt is not for the log
    assert re.search(r"WARNING .*this is a vLLM warning line", log)  # warnings keep their level


# -- a provider's partly masked echo --------------------------------------------------------------
@pytest.fixture
def masking_provider():
    """An OpenAI-compatible upstream that refuses every key and echoes it partly masked, as OpenAI does."""

    async def refuse(request):
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        masked = f"{sent[:12]}{'*' * (len(sent) - 16)}{sent[-4:]}"
        return JSONResponse({"error": {"message": f"Incorrect API key provided: {masked}. You can find your API key "
                                                  f"at the provider's site.", "type": "invalid_request_error"}},
                            status_code=401)

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/v1/chat/completions", refuse, methods=["POST"])]),
                                           host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(10)


def test_a_partly_masked_echo_of_the_key_is_redacted(masking_provider, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(f'tiers:\n  1: {{runner: hosted, model: gpt-x, base_url: "{masking_provider}", '
                       f"api_key_env: TIER1_TEST_KEY, base_url_env: null}}\n")
    server = ServerProcess("--profile", str(profile), "--data-dir", str(tmp_path / "data"), env={"TIER1_TEST_KEY": KEY},
                           log_path=tmp_path / "server.log")
    try:
        server.wait_ready(timeout=60)
        answer = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                            json={"model": "tier:1", "messages": [{"role": "user", "content": "hi"}]})
        ready = httpx.get(f"{server.base_url}/ready").text
    finally:
        server.stop()
    assert answer.status_code == 502 and "refused the API key from TIER1_TEST_KEY" in answer.text
    assert "[redacted]" in answer.text
    assert leaks(answer.text + ready + server.output()) == []
