"""`tier-runner serve --workers 2` for real: two gateway processes on one port in front of Tier 3 served by a gateway
of its own (SmolLM2, attached by `url`, the layout docs/scaling.md gives), one Redis.

Requests on fresh connections spread over both workers; one worker is SIGKILLed under load and uvicorn starts
another, which claims the dead one's spool slot: every request a client got a 200 for has its ledger row, and the
request count on /metrics (summed over the workers, the dead one's too) equals the ledger's. A client key's rate
limit holds across the workers. What the workers cannot share is refused at start, naming the fix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO, ChildProcess, RedisServer, ServerProcess, free_port
from tiers.auth import hash_key
from tiers.ledger import schema

UPSTREAM_PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, threads: 1, max_batch: 4, n_ctx: 512}
"""
PROFILE = "devices: {{cpu: {{kind: cpu}}}}\ntiers:\n  3: {{runner: vllm, model: 'tier:3', url: 'http://127.0.0.1:{port}/v1'}}\n"
ROUTING = "features:\n  chat: {tier: 3, value: internal, owner: ops, failure_cost_usd: 1}\n"
SECRETS = {name: f"sk-{name}-{uuid.uuid4().hex}" for name in ("open", "limited")}
KEYS = f"""keys:
  - {{id: open, sha256: {hash_key(SECRETS['open'])}}}
  - {{id: limited, sha256: {hash_key(SECRETS['limited'])}, rate_limit: {{requests_per_minute: 10}}}}
"""
BODY = {"model": "feature:chat", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 1,
        "temperature": 0}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    (root / "upstream.yaml").write_text(UPSTREAM_PROFILE)
    (root / "routing.yaml").write_text(ROUTING)
    (root / "keys.yaml").write_text(KEYS)
    redis = RedisServer(root).start()
    port = free_port()
    upstream = ChildProcess([sys.executable, "-m", "tiers", "serve", "--port", str(port), "--profile",
                             str(root / "upstream.yaml"), "--data-dir", str(root / "upstream-data")], port=port,
                            log_path=root / "upstream.log")
    (root / "profile.yaml").write_text(PROFILE.format(port=port))
    gateway = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                            "--keys", str(root / "keys.yaml"), "--redis-url", redis.url, "--workers", "2",
                            log_path=root / "gateway.log")
    try:
        upstream.wait_ready(timeout=180)
        gateway.wait_ready(timeout=120)
        yield gateway
    finally:
        gateway.stop()
        upstream.stop()
        redis.stop()


def workers(gateway) -> list[int]:
    """The worker processes: uvicorn spawns them from the gateway's own process."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = open(f"/proc/{entry.name}/stat").read()
            cmdline = open(f"/proc/{entry.name}/cmdline", "rb").read()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == gateway.proc.pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chat(gateway, key: str = "open") -> httpx.Response:
    """One request on a connection of its own, so the kernel may hand it to either worker."""
    return httpx.post(f"{gateway.base_url}/v1/chat/completions", json=BODY, timeout=60,
                      headers={"authorization": f"Bearer {SECRETS[key]}"})


def ledger_ids(gateway) -> set[str]:
    """The request ids of the ledger's final rows (one per answered request)."""
    engine = sa.create_engine(f"sqlite:///{gateway.data_dir / 'ledger.db'}")
    with engine.connect() as conn:
        ids = conn.execute(sa.select(schema.attempts.c.request_id).where(schema.attempts.c.final)).scalars().all()
    engine.dispose()
    return set(ids)


def metric_requests(gateway) -> float:
    families = text_string_to_metric_families(httpx.get(f"{gateway.base_url}/metrics", timeout=30).text)
    return sum(s.value for f in families if f.name == "tier_requests" for s in f.samples if s.name.endswith("_total"))


def test_a_killed_worker_loses_no_ledger_row_and_metrics_count_every_worker(setup):
    gateway = setup
    first = workers(gateway)
    assert len(first) == 2, first
    answered: list[str] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                response = chat(gateway)
            except httpx.TransportError:
                continue  # on the killed worker: the connection broke; the client gets no answer
            if response.status_code == 200:
                answered.append(response.headers["x-request-id"])

    before = {pid: cpu_s(pid) for pid in first}
    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    time.sleep(4)
    used = {pid: cpu_s(pid) - before[pid] for pid in first}
    share = {pid: used[pid] / sum(used.values()) for pid in first}
    os.kill(first[0], signal.SIGKILL)
    killed_at, count_at_kill = time.monotonic(), len(answered)
    while time.monotonic() < killed_at + 60 and not (len(workers(gateway)) == 2 and first[0] not in workers(gateway)):
        time.sleep(0.2)
    time.sleep(3)  # the new worker serves for a while too
    stop.set()
    for t in threads:
        t.join()
    print(f"CPU share per worker before the kill: {share}; answered {count_at_kill} before, {len(answered)} in all")
    assert all(s > 0.15 for s in share.values()), share  # both workers took requests
    replaced = workers(gateway)
    assert len(replaced) == 2 and first[0] not in replaced and first[1] in replaced, (first, replaced)
    assert len(answered) > count_at_kill + 10  # requests went on being answered after the kill

    deadline = time.monotonic() + 30  # live workers flush every 0.2 s; the new one loaded the dead one's spool
    while time.monotonic() < deadline and not set(answered) <= ledger_ids(gateway):
        time.sleep(0.5)
    final = ledger_ids(gateway)
    missing = set(answered) - final
    assert not missing, f"{len(missing)} answered requests have no ledger row"
    assert metric_requests(gateway) == len(final)  # the dead worker's counts are still in the sum


def test_a_keys_rate_limit_holds_across_workers(setup):
    codes = [chat(setup, "limited").status_code for _ in range(16)]
    assert codes.count(200) == 10 and codes.count(429) == 6, codes


@pytest.mark.parametrize(("profile", "extra", "says"), [
    ("cpu-tier3", ["--redis-url", "redis://127.0.0.1:1/0"], "tiers.3 (llamacpp: smollm2-135m-instruct-q4_1) would run "
                                                            "on this machine once per worker"),
    (None, [], "give --redis-url"),
    (None, ["--redis-url", "redis://127.0.0.1:1/0", "--cache-backend", "memory"], "a cache of its own"),
])
def test_what_workers_cannot_share_is_refused_at_start(tmp_path, profile, extra, says):
    if profile is None:
        profile = str(tmp_path / "hosted.yaml")
        (tmp_path / "hosted.yaml").write_text("tiers:\n  1: {runner: hosted, model: m, base_url: "
                                              "'http://127.0.0.1:1/v1', api_key_env: null}\n")
    done = subprocess.run([sys.executable, "-m", "tiers", "serve", "--workers", "2", "--profile", profile,
                           "--data-dir", str(tmp_path / "data"), *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and says in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "data" / "metrics").exists()  # refused before anything was prepared
