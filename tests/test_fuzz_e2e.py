"""Bounded fuzzing of the real server: no 5xx and no crash, whatever the request.

Schemathesis generates requests from the server's own OpenAPI document, and separately from OpenAI's
published document for the routes we implement (valid OpenAI requests, including features we do not
support, must get a clean answer or a 4xx). A small context keeps each generation short.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess

PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, n_ctx: 256, max_batch: 4}
"""
SPEC = Path(__file__).parent / "openai_openapi" / "openapi.yaml"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    (root / "profile.yaml").write_text(PROFILE)
    proc = ServerProcess("--profile", str(root / "profile.yaml"), log_path=root / "server.log")
    proc.wait_ready()
    yield proc
    proc.stop()


def run_schemathesis(*args: str) -> tuple[int, int, str]:
    binary = shutil.which("schemathesis") or str(Path(__file__).resolve().parents[1] / ".venv/bin/schemathesis")
    result = subprocess.run([binary, "run", *args, "--checks", "not_a_server_error", "--seed", "1",
                             "--request-timeout", "60"], capture_output=True, text=True, timeout=900)
    found = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert found, result.stdout[-3000:]
    return int(found.group(1)), int(found.group(2)), result.stdout


def test_own_openapi_document_fuzzed_without_server_errors(server):
    generated, passed, output = run_schemathesis(f"{server.base_url}/openapi.json", "-n", "25")
    assert generated >= 300 and passed == generated, output[-3000:]
    assert server.proc.poll() is None
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_openai_documented_chat_requests_never_get_a_server_error(server):
    generated, passed, output = run_schemathesis(
        str(SPEC), "-u", f"{server.base_url}/v1", "--include-operation-id", "createChatCompletion",
        "--phases", "fuzzing", "-n", "60")
    assert "Selected: 1/" in output, output[-3000:]
    assert generated >= 15 and passed == generated, output[-3000:]
    assert server.proc.poll() is None
