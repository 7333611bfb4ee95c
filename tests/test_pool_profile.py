"""Pools and vLLM parallelism in the profile: validated with errors that name the file, the key and the fix; turned
into the right runners, command lines and environments; and placed replica by replica, GPU by GPU, by the fit check
(on a described machine: no GPU is needed, and none is used)."""

from __future__ import annotations

import json

import pytest

from hardware.detect import GiB, Gpu, Machine
from hardware.errors import ConfigError
from hardware.profile import load_profile
from runners.pool import PoolRunner, build_tier_runner
from runners.supervisor import check_fits
from runners.vllm_launch import command, environment


def machine(gpus: int, free_gib: float = 80) -> Machine:
    return Machine("test CPU", ("avx2",), 16, int(256 * GiB), int(200 * GiB),
                   tuple(Gpu(i, "H100", int(80 * GiB), int(free_gib * GiB)) for i in range(gpus)), "test")


def write(tmp_path, text: str):
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def model_folder(tmp_path):
    """A transformers folder with a 16 GiB (sparse) weights file: an 8B model in bf16, 32 layers, 8 KV heads."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_attention_heads": 32, "hidden_size": 4096,
                                                    "num_hidden_layers": 32, "num_key_value_heads": 8,
                                                    "max_position_embeddings": 8192}))
    with (folder / "model.safetensors").open("wb") as f:
        f.truncate(16 * GiB)
    return folder


def runners_of(path):
    source, profile = load_profile(path)
    return {t: build_tier_runner(t, p, str(source), profile.devices) for t, p in profile.tiers.items()}


@pytest.mark.parametrize(("replica", "expected"), [
    ("{model: other}", "tiers.3.replicas.1: Value error, model: a replica serves its tier's model"),
    ("{runner: vllm}", "tiers.3.replicas.1: Value error, runner: a replica runs its tier's runner"),
    ("{weight: 0}", "tiers.3.replicas.1.weight: Input should be greater than 0"),
    ("{device: gpu9}", "tiers.3.replicas.1.device names 'gpu9', which is not under `devices` (defined: cpu)"),
])
def test_a_bad_replica_names_the_file_the_key_and_the_fix(tmp_path, replica, expected):
    path = write(tmp_path, "devices: {cpu: {kind: cpu}}\ntiers:\n  3: {runner: llamacpp, device: cpu, model: m, "
                           f"replicas: [{{threads: 1}}, {replica}]}}\n")
    with pytest.raises(ConfigError) as err:
        load_profile(path)
    assert str(path) in err.value.message and expected in err.value.message


@pytest.mark.parametrize(("extra", "expected"), [
    ("min_ready: 3", "min_ready is 3 but the tier lists 2 replicas; lower min_ready or add replicas"),
    ("min_ready: 2, replicas: []", "min_ready is for a pool: list `replicas`, or remove min_ready"),
    ("replicas: [{name: x}, {name: x}]", "replica names must be unique"),
])
def test_pool_keys_are_checked(tmp_path, extra, expected):
    replicas = "" if "replicas" in extra else "replicas: [{threads: 1}, {threads: 1}], "
    path = write(tmp_path, f"tiers:\n  3: {{runner: llamacpp, model: m, {replicas}{extra}}}\n")
    with pytest.raises(ConfigError, match=expected):
        load_profile(path)


def test_each_replica_is_a_runner_with_its_own_options_validated_by_its_runner(tmp_path):
    path = write(tmp_path, "devices: {cpu: {kind: cpu}}\ntiers:\n  3:\n    runner: llamacpp\n    device: cpu\n"
                           "    model: smollm2-135m-instruct-q4_1\n    n_ctx: 1024\n"
                           "    replicas: [{threads: 1}, {name: big, threads: 3, weight: 3}]\n")
    pool = runners_of(path)[3]
    assert isinstance(pool, PoolRunner) and pool.kind == "llamacpp"
    assert [(m.replica, m.options.threads, m.options.n_ctx) for m in pool.members] == [("r1", 1, 1024), ("big", 3, 1024)]
    assert [r["weight"] for r in pool.replicas()] == [1.0, 3.0]
    bad = write(tmp_path, "tiers:\n  3: {runner: llamacpp, model: m, replicas: [{threads: 1}, {threads: lots}]}\n")
    with pytest.raises(ConfigError, match=r"profile.yaml: tiers.3.replicas.1: threads.int: Input should be a valid integer"):
        runners_of(bad)


def test_hosted_replicas_are_several_base_urls_or_keys_of_one_protocol(tmp_path, monkeypatch):
    path = write(tmp_path, "tiers:\n  1:\n    runner: hosted\n    model: gpt-4o\n    base_url_env: null\n    replicas:\n"
                           "      - {base_url: 'https://eu.example.com/v1', api_key_env: EU_KEY}\n"
                           "      - {base_url: 'https://us.example.com/v1', api_key_env: US_KEY}\n")
    pool = runners_of(path)[1]
    assert [(m.options.base_url, m.options.api_key_env) for m in pool.members] == [
        ("https://eu.example.com/v1", "EU_KEY"), ("https://us.example.com/v1", "US_KEY")]
    mixed = write(tmp_path, "tiers:\n  1: {runner: hosted, model: m, replicas: [{provider: openai}, "
                            "{provider: anthropic}]}\n")
    with pytest.raises(ConfigError, match="replicas speak different protocols"):
        runners_of(mixed)


def vllm_profile(tmp_path, model_folder, tier2: str, gpus: int = 2) -> object:
    devices = "".join(f"  gpu{i}: {{kind: cuda, index: {i}}}\n" for i in range(gpus))
    return write(tmp_path, f"devices:\n{devices}tiers:\n  2:\n    runner: vllm\n    model: {model_folder}\n"
                           f"    gpu_memory_utilization: 0.9\n    max_model_len: 8192\n{tier2}")


def test_tensor_parallel_places_a_shard_on_each_gpu_and_needs_them_all(tmp_path, model_folder):
    runners = runners_of(vllm_profile(tmp_path, model_folder, "    device: gpu0\n    tensor_parallel_size: 2\n"))
    needs = runners[2].memory_needs()
    assert [(n.device.index, n.weights) for n in needs] == [(0, 8 * GiB), (1, 8 * GiB)]
    assert environment(runners[2])["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "VLLM_CPU_OMP_THREADS_BIND" not in environment(runners[2])  # thread binding is a CPU device's matter
    assert [p.where for p in check_fits(runners, "p", machine(2))][1:] == ["cuda:0 H100 (VRAM)", "cuda:1 H100 (VRAM)"]
    with pytest.raises(ConfigError, match=r"device 'gpu0\+1' \(cuda index 1\), which this machine does not have"):
        check_fits(runners, "p", machine(1))


def test_a_cpu_vllm_server_shares_the_cores_unless_told_to_pin(tmp_path, model_folder):
    """vLLM's `auto` binding pins every server to the same cores: a live swap's new server starves behind the old."""
    base = f"devices: {{cpu: {{kind: cpu}}}}\ntiers:\n  2:\n    runner: vllm\n    device: cpu\n    model: {model_folder}\n"
    assert environment(runners_of(write(tmp_path, base))[2])["VLLM_CPU_OMP_THREADS_BIND"] == "nobind"
    pinned = runners_of(write(tmp_path, base + "    cpu_threads_bind: 0-7\n"))[2]
    assert environment(pinned)["VLLM_CPU_OMP_THREADS_BIND"] == "0-7"
    with pytest.raises(ConfigError, match="cpu_threads_bind"):
        runners_of(write(tmp_path, base + "    cpu_threads_bind: everywhere\n"))


def test_parallelism_flags_pass_through_to_vllm(tmp_path, model_folder, monkeypatch):
    monkeypatch.setattr("runners.vllm_launch.python", lambda runner: "python")
    tier2 = ("    device: gpu0\n    tensor_parallel_size: 2\n    pipeline_parallel_size: 2\n    data_parallel_size: 2\n"
             "    distributed_executor_backend: ray\n    nodes: 2\n")
    runner = runners_of(vllm_profile(tmp_path, model_folder, tier2, gpus=4))[2]
    cmd = " ".join(command(runner, str(model_folder), 8000))
    assert ("--tensor-parallel-size 2" in cmd and "--pipeline-parallel-size 2" in cmd and "--data-parallel-size 2" in cmd
            and "--distributed-executor-backend ray --data-parallel-backend ray" in cmd)
    needs = runner.memory_needs()  # 8 GPUs over 2 nodes: 4 here, each a quarter of a tensor x pipeline shard
    assert [n.device.index for n in needs] == [0, 1, 2, 3] and needs[0].weights == 4 * GiB
    assert environment(runner)["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"


@pytest.mark.parametrize(("tier2", "expected"), [
    ("    nodes: 2\n", "nodes: 2 nodes need distributed_executor_backend: ray"),
    ("    tensor_parallel_size: 3\n    nodes: 2\n    distributed_executor_backend: ray\n",
     "3 GPUs do not split evenly over 2 nodes"),
    ("    url: http://10.0.0.5:8000/v1\n    tensor_parallel_size: 2\n", "an attached server's parallelism is set where"),
])
def test_parallelism_that_cannot_work_is_refused_at_load(tmp_path, model_folder, tier2, expected):
    with pytest.raises(ConfigError, match=expected):
        runners_of(vllm_profile(tmp_path, model_folder, "    device: gpu0\n" + tier2))


def test_the_fit_check_places_every_replica_of_a_pool(tmp_path, model_folder):
    pool = "    replicas:\n      - {device: gpu0}\n      - {device: gpu1}\n      - {url: 'http://10.0.0.5:8000/v1'}\n"
    runners = runners_of(vllm_profile(tmp_path, model_folder, pool))
    placements = check_fits(runners, "p", machine(2))
    assert [(p.where, p.tiers) for p in placements] == [("cpu (RAM)", (2, 2)), ("cuda:0 H100 (VRAM)", (2,)),
                                                        ("cuda:1 H100 (VRAM)", (2,))]  # the url replica is not ours
    overlapping = "    replicas:\n      - {device: gpu0, tensor_parallel_size: 2}\n      - {device: gpu1}\n"
    with pytest.raises(ConfigError, match=r"tiers 2 \(replica r1\), 2 \(replica r2\) on 'gpu0\+1' reserve 144.00 GiB"):
        check_fits(runners_of(vllm_profile(tmp_path, model_folder, overlapping)), "p", machine(2))
    with pytest.raises(ConfigError, match=r"tier 2 \(replica r2\) runs on device 'gpu1'"):
        check_fits(runners, "p", machine(1))


def test_the_shipped_gpu_node_profile_is_two_gpu_tensor_parallel():
    _, profile = load_profile("gpu-node")
    assert profile.tiers[2].options["tensor_parallel_size"] == 2 and profile.devices["gpu1"].index == 1
