"""What the operations and profile docs promise about restarts and environment variables, each checked on the
real code path: a tier added or removed needs a restart, TIER_RUNNER_SKIP_FIT_CHECK skips the fit check,
TIER_RUNNER_CACHE moves the model cache, TIER_RUNNER_SKIP_VLLM skips the vLLM tests and says so."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hardware.catalog import cache_dir, load_catalog
from hardware.errors import ConfigError
from hardware.fit import Need
from hardware.profile import Device
from runners.supervisor import Supervisor
from tests.test_supervisor import FakeRunner
from tiers.tier_runners import TierRunners

REPO = Path(__file__).resolve().parent.parent
TIER3 = "  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1}\n"
TIER2 = "  2: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1}\n"


def test_adding_or_removing_a_tier_is_refused_until_a_restart(tmp_path):
    """docs/operations.md: a reload swaps changed placements; adding or removing a tier needs a restart."""
    profile = tmp_path / "profile.yaml"
    profile.write_text("devices: {cpu: {kind: cpu}}\ntiers:\n" + TIER3)
    runners = TierRunners(profile)
    for edit in (TIER3 + TIER2, ""):
        profile.write_text("devices: {cpu: {kind: cpu}}\ntiers:\n" + (edit or TIER2))
        with pytest.raises(ConfigError, match="tiers were added or removed; restart the server"):
            asyncio.run(runners.swap_changed())
        assert runners.tiers() == [3]


class HugeRunner(FakeRunner):
    """A runner that would need a petabyte of RAM."""

    def memory_need(self) -> Need:
        return Need(self.tier, "cpu", Device(kind="cpu"), 10**15, 0, 0)


def test_tier_runner_skip_fit_check_skips_the_fit_check(monkeypatch):
    """docs/profiles.md: the fit check stops a profile that does not fit; TIER_RUNNER_SKIP_FIT_CHECK=1 skips it."""
    monkeypatch.delenv("TIER_RUNNER_SKIP_FIT_CHECK", raising=False)
    with pytest.raises(ConfigError, match="does not fit"):
        asyncio.run(Supervisor({3: HugeRunner(3)}).start())
    monkeypatch.setenv("TIER_RUNNER_SKIP_FIT_CHECK", "1")
    runner = HugeRunner(3)
    asyncio.run(Supervisor({3: runner}).start())
    assert runner.status().state == "ready"


def test_tier_runner_cache_moves_the_model_cache(tmp_path, monkeypatch):
    """docs/profiles.md: joined model files live in ~/.cache/value-tier-runner/models unless TIER_RUNNER_CACHE
    moves them."""
    monkeypatch.delenv("TIER_RUNNER_CACHE", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "value-tier-runner" / "models"
    monkeypatch.setenv("TIER_RUNNER_CACHE", str(tmp_path))
    joined = load_catalog().entry("qwen2.5-coder-0.5b-instruct-q4_k_m").source.locate()
    assert joined.parent == tmp_path / "models"


def test_tier_runner_skip_vllm_skips_the_vllm_tests_and_says_so():
    """docs/operations.md: run directly, pytest skips the vLLM tests only with TIER_RUNNER_SKIP_VLLM=1."""
    env = {**os.environ, "TIER_RUNNER_SKIP_VLLM": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             "tests/test_vllm_e2e.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert "TIER_RUNNER_SKIP_VLLM=1: the real vLLM tests were skipped on purpose" in result.stdout, result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("1 skipped in"), last  # skipped, said so, nothing run and nothing failed
