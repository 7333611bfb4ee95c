"""Tier 2 on the real vLLM server (CPU build) behind the gateway: answers, streaming, crash and restart;
then the whole shipped workstation profile, all three tiers, from one `make serve-tiers`.

Needs `.venv-vllm` and the converted SmolLM2 folder, which `make test` sets up (`make vllm-setup`).
`make test SKIP_VLLM=1` (TIER_RUNNER_SKIP_VLLM=1) skips this module knowingly; otherwise a missing
setup fails here, it is never skipped silently. One gateway (and one vLLM, ~30 s to start) serves
the module's Tier 2 tests; the workstation tests at the end start their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from hardware.catalog import load_catalog, resolve_model_file
from runners.procs import group_alive
from tests.conftest import REPO, ChildProcess, ServerProcess, free_port

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
MODEL = "smollm2-135m-instruct-bf16"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

if os.environ.get("TIER_RUNNER_SKIP_VLLM") == "1":
    pytest.skip("TIER_RUNNER_SKIP_VLLM=1: the real vLLM tests were skipped on purpose", allow_module_level=True)


def profile_yaml() -> str:
    return f"""
devices: {{cpu: {{kind: cpu}}}}
tiers:
  2:
    runner: vllm
    device: cpu
    model: {MODEL}
    python: {VLLM_PYTHON}
    dtype: float32
    enforce_eager: true
    max_model_len: 1024
    cpu_kvcache_space_gib: 1
    tool_call_parser: hermes
    stop_timeout_s: 10
    restart: {{backoff_s: 1, backoff_max_s: 8, check_interval_s: 0.5}}
"""


ROUTING = """
features:
  field-extraction: {tier: 2, value: revenue, owner: ops, failure_cost_usd: 20}
"""


def vllm_processes(parent: int | None = None, pgid: int | None = None) -> list[int]:
    """Live pids that are vLLM servers under `parent`, or any live process in group `pgid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        state, ppid, group = stat[stat.rindex(")") + 2:].split()[:3]
        if state == "Z":
            continue
        if parent is not None and int(ppid) == parent and "vllm.entrypoints.openai.api_server" in cmdline:
            found.append(int(entry.name))
        if pgid is not None and int(group) == pgid:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    if not VLLM_PYTHON.exists():
        pytest.fail(f"{VLLM_PYTHON} is missing: run `make vllm-setup` (or `make test SKIP_VLLM=1` to skip knowingly)")
    folder = load_catalog().models[MODEL].source.locate()
    if not (folder / "config.json").exists():
        pytest.fail(f"{folder} is missing: run `make vllm-setup` to convert the model")
    root = tmp_path_factory.mktemp("vllm")
    (root / "profile.yaml").write_text(profile_yaml())
    (root / "routing.yaml").write_text(ROUTING)
    proc = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                         log_path=root / "gateway.log")
    started = time.monotonic()
    try:
        proc.wait_ready(timeout=300)
        proc.ready_after_s = time.monotonic() - started
        yield proc
    finally:
        proc.stop()


def chat(gateway, **extra) -> httpx.Response:
    body = {"model": "feature:field-extraction", "messages": QUESTION, "temperature": 0, "max_tokens": 24, **extra}
    return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120)


def tier2(gateway) -> dict:
    return httpx.get(f"{gateway.base_url}/ready", timeout=5).json()["tiers"]["2"]


def test_ready_names_the_vllm_process(gateway):
    status = tier2(gateway)
    assert (status["state"], status["runner"], status["model"]) == ("ready", "vllm", MODEL)
    pid = vllm_processes(parent=gateway.proc.pid)
    assert len(pid) == 1 and f"pid {pid[0]}" in status["detail"]


def test_answer_is_real_text(gateway):
    response = chat(gateway)
    assert response.status_code == 200, response.text
    assert (response.headers["x-tier"], response.headers["x-model"]) == ("2", MODEL)
    body = response.json()
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0


def test_streaming_answer(gateway):
    body = {"model": "feature:field-extraction", "messages": QUESTION, "temperature": 0, "max_tokens": 24,
            "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "Paris" in text
    assert len([c for c in chunks if c["choices"]]) > 2  # token by token, not one replayed blob
    assert chunks[-1]["usage"]["completion_tokens"] > 0


def test_guided_choice_and_logprobs_pass_through(gateway):
    response = chat(gateway, messages=[{"role": "user", "content": "Is 'I loved this film' positive or negative?"}],
                    guided_choice=["positive", "negative"], logprobs=True, top_logprobs=2)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["message"]["content"] in ("positive", "negative")
    assert choice["logprobs"]["content"][0]["top_logprobs"]


def test_json_schema_response_format(gateway):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    response = chat(gateway, max_tokens=40,
                    response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert response.status_code == 200, response.text
    assert isinstance(json.loads(response.json()["choices"][0]["message"]["content"])["city"], str)


WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather for a city",
                                           "parameters": WEATHER_SCHEMA}},
         {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_calls_pass_through_to_vllm(gateway, choice):
    from tests.openai_schema import validate

    body = {"model": "tier:2", "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
            "tools": TOOLS, "tool_choice": choice, "temperature": 0, "max_tokens": 60}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    validate(response.json(), "CreateChatCompletionResponse")
    calls = response.json()["choices"][0]["message"]["tool_calls"]
    assert calls and all(c["function"]["name"] in ("get_weather", "get_time") for c in calls)
    assert response.json()["choices"][0]["finish_reason"] in ("tool_calls", "stop")
    if isinstance(choice, dict):
        assert {c["function"]["name"] for c in calls} == {"get_weather"}
    for call in calls:
        json.loads(call["function"]["arguments"])  # vLLM's arguments are JSON; the schema is the gate's to check


def test_a_tool_feature_on_vllm_is_gated_and_a_bad_call_is_never_returned(gateway):
    """vLLM's CPU build named-calls get_weather with arguments "gaben" (JSON, but not the schema's object): the
    tool_call gate fails it, and with no stronger tier in this profile the unverified call is a 503, not a 200."""
    body = {"model": "feature:field-extraction", "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
            "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}, "temperature": 0,
            "max_tokens": 60}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 503, response.text
    assert "failed its gate on tier 2 (tool_call:schema_violation@get_weather/root)" in response.json()["error"]["message"]


def test_tool_choice_auto_reaches_vllms_tool_parser(gateway):
    """`tool_call_parser: hermes` in the profile starts vLLM with --enable-auto-tool-choice; without it vLLM
    answers auto with a 400. SmolLM2 answers this one in text."""
    assert "--tool-call-parser hermes" in " ".join(_vllm_cmdline(gateway))
    body = {"model": "tier:2", "messages": [{"role": "user", "content": "Say hello."}], "tools": TOOLS,
            "tool_choice": "auto", "temperature": 0, "max_tokens": 16}
    response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


def _vllm_cmdline(gateway) -> list[str]:
    (pid,) = vllm_processes(parent=gateway.proc.pid)
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def test_a_text_completion_goes_to_vllms_own_completions_endpoint(gateway):
    """(tests/test_completions_e2e.py covers the API on Tier 3; this is the vLLM forwarding, on the real server.)"""
    body = {"model": "tier:2", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0, "logprobs": 2}
    response = httpx.post(f"{gateway.base_url}/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert "Paris" in choice["text"] and "".join(choice["logprobs"]["tokens"]) == choice["text"]
    assert 3 <= response.json()["usage"]["prompt_tokens"] <= 10  # the bare prompt, no chat template
    with httpx.stream("POST", f"{gateway.base_url}/v1/completions", json={**body, "stream": True}, timeout=120) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == choice["text"]


def test_messages_and_count_tokens_on_vllm(gateway):
    """Anthropic's Messages endpoint in front of Tier 2; count_tokens asks vLLM's own tokenizer."""
    body = {"model": "tier:2", "max_tokens": 8, "temperature": 0, "messages": QUESTION}
    answer = httpx.post(f"{gateway.base_url}/v1/messages", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["content"][0]["text"]
    counted = httpx.post(f"{gateway.base_url}/v1/messages/count_tokens", timeout=60,
                         json={"model": "tier:2", "messages": QUESTION})
    assert counted.headers["x-token-count"] == "exact"
    assert counted.json()["input_tokens"] == answer.json()["usage"]["input_tokens"]


def test_an_edited_vllm_placement_goes_live_once_the_new_server_is_ready(gateway):
    """A promoted model or edited placement on a vLLM tier: the new server starts while the old one serves,
    takes the tier once it is ready (a vLLM runner is always `starting` at first), and the old one is drained
    and stopped."""
    [old_pid] = vllm_processes(parent=gateway.proc.pid)
    profile = Path(httpx.get(f"{gateway.base_url}/ready", timeout=5).json()["profile"])
    original = profile.read_text()
    profile.write_text(original.replace("    max_model_len: 1024\n", "    max_model_len: 1024\n    max_num_seqs: 4\n"))
    try:
        deadline = time.monotonic() + 240
        answered = 0
        while f"pid {old_pid}" in tier2(gateway)["detail"]:
            assert time.monotonic() < deadline, gateway.output()[-3000:]
            response = chat(gateway, max_tokens=4)
            assert response.status_code == 200, response.text  # the old server serves throughout the swap
            answered += 1
        assert answered > 0
        [new_pid] = [p for p in vllm_processes(parent=gateway.proc.pid) if p != old_pid] or [None]
        assert new_pid is not None and f"pid {new_pid}" in tier2(gateway)["detail"]
        assert "Paris" in chat(gateway).json()["choices"][0]["message"]["content"]
        while old_pid in vllm_processes(parent=gateway.proc.pid):  # drained, then stopped
            assert time.monotonic() < deadline, "the replaced vLLM server was never stopped"
            time.sleep(0.2)
    finally:
        profile.write_text(original)  # the module's later tests expect the original placement back
    _wait_for_single_vllm(gateway)


def _wait_for_single_vllm(gateway, timeout: float = 240) -> None:
    """After a placement edit is reverted the tier swaps back: wait until one ready vLLM serves it."""
    deadline = time.monotonic() + timeout
    before = set(vllm_processes(parent=gateway.proc.pid))
    while time.monotonic() < deadline:
        now = set(vllm_processes(parent=gateway.proc.pid))
        status = tier2(gateway)
        if len(now) == 1 and now != before and status["state"] == "ready" and f"pid {min(now)}" in status["detail"]:
            return
        time.sleep(0.3)
    raise AssertionError(f"tier 2 did not settle on one vLLM server: {tier2(gateway)}")


def test_attach_to_a_running_vllm_by_url(gateway, tmp_path):
    """`url:` attaches to a vLLM server that already runs (here: the one the module's gateway started)."""
    base = tier2(gateway)["detail"].split(" at ")[-1]
    (tmp_path / "profile.yaml").write_text(f"tiers:\n  2: {{runner: vllm, model: {MODEL}, url: '{base}/v1'}}\n")
    (tmp_path / "routing.yaml").write_text(ROUTING)
    attached = ServerProcess("--profile", str(tmp_path / "profile.yaml"), "--routing", str(tmp_path / "routing.yaml"),
                             log_path=tmp_path / "attached.log")
    try:
        attached.wait_ready(timeout=60)
        assert tier2(attached)["detail"] == f"attached to {base}"
        assert "Paris" in chat(attached).json()["choices"][0]["message"]["content"]
    finally:
        attached.stop()
    assert tier2(gateway)["state"] == "ready"  # stopping the attached gateway left the server alone


def test_killing_vllm_mid_request_is_a_clean_error_then_it_comes_back(gateway):
    [pid] = vllm_processes(parent=gateway.proc.pid)
    result: dict = {}

    def long_request():
        result["response"] = chat(gateway, max_tokens=600, messages=[{"role": "user", "content": "Write a long story."}])

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(3)
    assert worker.is_alive(), "the request finished before vLLM could be killed; make it longer"
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=60)
    response = result["response"]
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "service_unavailable" and "tier 2" in error["message"]

    status = tier2(gateway)
    assert status["state"] == "failed" and f"pid {pid}" in status["detail"], status  # /ready tells at once
    deadline = time.monotonic() + 180  # restart backoff 1 s, then vLLM's own start (~30-40 s here)
    while time.monotonic() < deadline and status["state"] != "ready":
        time.sleep(0.3)
        status = tier2(gateway)
    assert status["state"] == "ready", status
    print(f"vLLM back {time.monotonic() - killed_at:.1f} s after SIGKILL")
    assert not vllm_processes(pgid=pid), "the crashed server's engine processes were left behind"
    [new_pid] = vllm_processes(parent=gateway.proc.pid)
    assert new_pid != pid
    assert "Paris" in chat(gateway).json()["choices"][0]["message"]["content"]


def test_stopping_the_gateway_leaves_no_vllm_process(gateway):
    pids = vllm_processes(parent=gateway.proc.pid)
    assert pids
    assert gateway.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful shutdown
    assert f"vLLM pid {pids[0]} stopped" in gateway.log_path.read_text()  # the supervisor stopped it, not a stray signal
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(vllm_processes(pgid=p) for p in pids):
        time.sleep(0.2)
    assert not any(vllm_processes(pgid=p) for p in pids)


def test_a_killed_gateway_takes_vllm_with_it(tmp_path):
    """SIGKILL gives the gateway no chance to clean up: the parent-death signal ends vLLM's group anyway."""
    (tmp_path / "profile.yaml").write_text(profile_yaml())
    (tmp_path / "routing.yaml").write_text(ROUTING)
    proc = ServerProcess("--profile", str(tmp_path / "profile.yaml"), "--routing", str(tmp_path / "routing.yaml"),
                         log_path=tmp_path / "gateway.log")
    try:
        proc.wait_ready(timeout=300)
        [pid] = vllm_processes(parent=proc.proc.pid)
        assert len(vllm_processes(pgid=pid)) > 1  # the API server and its engine processes
        proc.proc.kill()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and vllm_processes(pgid=pid):
            time.sleep(0.2)
        assert not vllm_processes(pgid=pid)
    finally:
        proc.stop()


# -- the shipped workstation profile: tier 3 on llama.cpp, tier 2 on vLLM, tier 1 hosted -----------------------
PLANTED_KEY = "sk-planted-workstation-secret-6620"


def upstream_openai_server(root: Path) -> ChildProcess:
    """Tier 1's upstream: llama-cpp-python's own OpenAI server (a third-party implementation of the protocol)
    on the SmolLM2 GGUF, answering only requests that carry PLANTED_KEY (tests/llama_cpp_server.py: no AMX)."""
    port = free_port()
    model = resolve_model_file("smollm2-135m-instruct-q4_1", load_catalog())
    cmd = [sys.executable, str(REPO / "tests" / "llama_cpp_server.py"), "--model", str(model),
           "--model_alias", "gpt-4o-mini",
           "--api_key", PLANTED_KEY, "--n_threads", "1", "--n_ctx", "1024", "--host", "127.0.0.1",
           "--port", str(port), "--verbose", "False"]
    return ChildProcess(cmd, port=port, log_path=root / "upstream.log", ready_path="/v1/models",
                        ready_headers={"authorization": f"Bearer {PLANTED_KEY}"})


def test_the_workstation_profile_fits_this_machine():
    result = subprocess.run([sys.executable, "-m", "tiers", "hardware", "--profile", "workstation"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tier 2: vllm smollm2-135m-instruct-bf16 on cpu" in result.stdout
    assert "tier 1: hosted gpt-4o-mini on remote" in result.stdout and ": ok" in result.stdout


def test_make_serve_tiers_serves_all_three_tiers_of_the_workstation(tmp_path):
    upstream = upstream_openai_server(tmp_path)
    port = free_port()
    env = {"OPENAI_BASE_URL": f"{upstream.base_url}/v1", "OPENAI_API_KEY": PLANTED_KEY,
           "TIER_RUNNER_DATA_DIR": str(tmp_path / "data"),
           "MAKEFLAGS": None, "MAKELEVEL": None, "MFLAGS": None}  # not a sub-make of `make test-vllm`
    gateway = ChildProcess(["make", "--no-print-directory", "serve-tiers", "PROFILE=workstation", f"PORT={port}"],
                           port=port, log_path=tmp_path / "serve-tiers.log", env=env, own_group=True)
    vllm_pid = None
    try:
        upstream.wait_ready(timeout=60)
        started = time.monotonic()
        gateway.wait_ready(timeout=300)
        print(f"make serve-tiers PROFILE=workstation: /ready 200 after {time.monotonic() - started:.1f} s")
        ready = httpx.get(f"{gateway.base_url}/ready", timeout=5).json()
        tiers = ready["tiers"]
        assert ready["status"] == "ready" and ready["profile"].endswith("hardware/profiles/workstation.yaml")
        assert {t: (s["state"], s["runner"]) for t, s in tiers.items()} == \
            {"1": ("ready", "hosted"), "2": ("ready", "vllm"), "3": ("ready", "llamacpp")}
        assert tiers["1"]["detail"] == "base_url from OPENAI_BASE_URL"
        vllm_pid = int(re.search(r"vLLM pid (\d+)", tiers["2"]["detail"]).group(1))
        ids = [m["id"] for m in httpx.get(f"{gateway.base_url}/v1/models", timeout=5).json()["data"]]
        assert {"tier:1", "tier:2", "tier:3"} <= set(ids)

        for tier in ("3", "2", "1"):
            response = httpx.post(f"{gateway.base_url}/v1/chat/completions", timeout=120, json={
                "model": f"tier:{tier}", "messages": QUESTION, "temperature": 0, "max_tokens": 16})
            assert response.status_code == 200, (tier, response.text)
            assert (response.headers["x-tier"], response.headers["x-model"]) == (tier, tiers[tier]["model"])
            assert response.json()["choices"][0]["message"]["content"].strip()
            assert response.json()["usage"]["completion_tokens"] > 0
    finally:
        gateway.stop()
        upstream.stop()
    assert not group_alive(gateway.proc.pid), "make or the gateway outlived the stop"
    assert vllm_pid is not None and not vllm_processes(pgid=vllm_pid), "vLLM outlived the gateway"
    log = gateway.output()
    assert "tier-runner serve --profile workstation" in log and f"vLLM pid {vllm_pid} stopped" in log
    assert PLANTED_KEY not in log
