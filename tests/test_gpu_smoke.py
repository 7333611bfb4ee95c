"""The GPU smoke check, as a test: skipped cleanly where no CUDA device exists (as on CPU machines)."""

from __future__ import annotations

import subprocess

import pytest

from hardware.detect import detect
from tests.conftest import REPO

pytestmark = pytest.mark.gpu


def test_vllm_serves_an_answer_on_the_gpu():
    machine = detect()
    if not machine.gpus:
        pytest.skip(f"no CUDA device: {machine.gpu_probe}")
    result = subprocess.run(["bash", "scripts/gpu-smoke.sh"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and "PASS" in result.stdout, result.stdout + result.stderr
