"""`make test` cannot go green without the real upstreams: a missing LiteLLM fails the Anthropic tests there."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def anthropic_tests(**env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "REQUIRE_LITELLM"}
    return subprocess.run([sys.executable, "-m", "pytest", "tests/test_anthropic_e2e.py", "-q", "-rs",
                           "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**environment, "TIER_RUNNER_LITELLM": "/nonexistent/litellm", **env})


def test_a_missing_litellm_fails_when_required():
    result = anthropic_tests(REQUIRE_LITELLM="1")
    assert result.returncode not in (0, 5), result.stdout[-2000:]
    assert "LiteLLM is missing" in result.stdout and "REQUIRE_LITELLM=1" in result.stdout


def test_a_missing_litellm_is_a_visible_skip_otherwise():
    result = anthropic_tests()
    assert result.returncode in (0, 5) and "SKIPPED" in result.stdout and "make litellm-setup" in result.stdout


def test_make_test_requires_litellm():
    dry = subprocess.run(["make", "-n", "test", "SKIP_VLLM=1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    pytest_lines = [line for line in dry.stdout.splitlines() if "-m pytest" in line]
    assert pytest_lines and all(line.startswith("REQUIRE_LITELLM=1 ") for line in pytest_lines), dry.stdout
