"""The GPU smoke check, as a test: its "skipped" exit code (77) is a pytest skip, never a pass."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO

SKIPPED = 77


def smoke(env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "scripts/gpu-smoke.sh"], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_without_a_gpu_the_smoke_check_says_skipped_not_passed(tmp_path):
    """An nvidia-smi that sees no GPU, first on PATH: the script must not exit 0."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    fake.chmod(0o755)
    result = smoke({"PATH": f"{tmp_path}:{os.environ['PATH']}"}, timeout=60)
    assert result.returncode == SKIPPED and result.stdout.startswith("SKIP"), result.stdout + result.stderr


@pytest.mark.gpu
def test_vllm_serves_an_answer_on_the_gpu():
    result = smoke()
    if result.returncode == SKIPPED:
        pytest.skip(result.stdout.strip())
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout + result.stderr
