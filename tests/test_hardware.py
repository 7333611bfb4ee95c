"""Hardware detection and the fit check, with real parsers on real inputs (this machine, the real GGUF)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hardware.catalog import load_catalog, resolve_model_file
from hardware.detect import GiB, Gpu, Machine, detect, parse_nvidia_smi
from hardware.errors import ConfigError
from hardware.fit import Need, check_fit, gguf_metadata, gguf_shape, kv_bytes_per_token
from hardware.profile import Device, load_profile
from runners.base import build_runner
from runners.supervisor import check_fits
from tests.conftest import REPO

CPU = Device(kind="cpu")
GPU0 = Device(kind="cuda", index=0)


def machine(ram_gib: float = 16, gpus=()) -> Machine:
    return Machine("test CPU", ("avx2",), 4, int(32 * GiB), int(ram_gib * GiB), tuple(gpus), "test")


def test_detect_this_machine():
    m = detect()
    assert m.cores >= 1 and m.ram_total > m.ram_available > 0
    assert m.cpu_model
    assert m.gpus == () or all(g.memory_total > 0 for g in m.gpus)


def test_nvidia_smi_output_is_parsed():
    gpus = parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 81559, 80000\n1, NVIDIA L4, 23034, 100\n")
    assert gpus[0] == Gpu(0, "NVIDIA H100 80GB HBM3", 81559 << 20, 80000 << 20)
    assert gpus[1].name == "NVIDIA L4" and gpus[1].memory_free == 100 << 20


def test_gguf_header_of_the_real_model():
    path = resolve_model_file("smollm2-135m-instruct-q4_1", load_catalog())
    meta = gguf_metadata(path, {"general.architecture", "llama.block_count"})
    assert meta == {"general.architecture": "llama", "llama.block_count": 30}
    size, layers, kv_heads, head_dim = gguf_shape(path)
    assert (size, layers, kv_heads, head_dim) == (98362432, 30, 3, 64)
    assert kv_bytes_per_token(layers, kv_heads, head_dim) == 23040  # f16 K and V


def test_fitting_profile_reports_each_device():
    needs = [Need(3, "cpu", CPU, GiB, GiB, GiB), Need(2, "gpu0", GPU0, 2 * GiB, GiB, 3 * GiB, gpu_fraction=0.5)]
    placements = check_fit(needs, machine(16, [Gpu(0, "L4", 24 * GiB, 23 * GiB)]))
    cpu, gpu = placements
    assert (cpu.need, cpu.tiers) == (6 * GiB, (3, 2))  # the GPU tier's host processes count on the CPU side
    assert (gpu.need, gpu.capacity, gpu.fits) == (3 * GiB, 12 * GiB, True)


def test_too_little_ram_gives_the_numbers():
    with pytest.raises(ConfigError, match=r"need 12.00 GiB of RAM but 8.00 GiB is available.*tier 3: weights 4.00 GiB"):
        check_fit([Need(3, "cpu", CPU, 4 * GiB, 6 * GiB, 2 * GiB)], machine(8))


def test_tier_on_a_missing_gpu_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"device 'gpu0' \(cuda index 0\), which this machine does not have; GPUs found: none"):
        check_fit([Need(2, "gpu0", GPU0, GiB, GiB, GiB, gpu_fraction=0.9)], machine())


def test_gpu_too_small_for_the_model():
    with pytest.raises(ConfigError, match=r"need 14.00 GiB .* but get 7.20 GiB"):
        check_fit([Need(2, "gpu0", GPU0, 12 * GiB, 2 * GiB, GiB, gpu_fraction=0.9)],
                  machine(16, [Gpu(0, "T4", 8 * GiB, 8 * GiB)]))


def test_shipped_profiles_place_on_this_machine():
    """workstation needs the converted model of `make vllm-setup`: test_vllm_e2e.py places it."""
    for name, fits in (("cpu-tier3", True), ("gpu-node", bool(detect().gpus))):
        path, profile = load_profile(name)
        runners = {t: build_runner(t, p, str(path), profile.devices) for t, p in profile.tiers.items()}
        if fits:
            assert check_fits(runners, str(path))
        else:
            with pytest.raises(ConfigError, match="gpu0"):
                check_fits(runners, str(path))


def test_hardware_command_prints_machine_and_placement():
    result = subprocess.run([sys.executable, "-m", "tiers", "hardware", "--profile", "cpu-tier3"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "cpu:" in result.stdout and "ram:" in result.stdout and "gpu:" in result.stdout
    assert "tier 3: llamacpp smollm2-135m-instruct-q4_1 on cpu" in result.stdout and ": ok" in result.stdout


def test_serve_refuses_a_profile_whose_gpu_is_missing(tmp_path):
    if detect().gpus:
        pytest.skip("this machine has a GPU")
    profile = tmp_path / "gpu.yaml"
    profile.write_text("devices: {gpu0: {kind: cuda, index: 0}}\n"
                       "tiers:\n  2: {runner: vllm, device: gpu0, model: some-org/some-model}\n")
    result = subprocess.run([sys.executable, "-m", "tiers", "serve", "--profile", str(profile), "--port", "0",
                             "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "which this machine does not have" in result.stderr
