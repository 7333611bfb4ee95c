"""Tier 2 as a pool of two real OpenAI-protocol servers (two of our own gateways serving Tier 3, SmolLM2 on one thread
each, attached by `url`), under 8 concurrent clients; one is SIGKILLed and brought back.

Both replicas get traffic; no request that had not started on the killed one fails (a non-streaming request
that was on it is retried on the other before its first byte; a stream that had begun there may break);
/ready shows it ejected, then ready again once it restarts; every response has its ledger row with its
replica. The figures (share per replica, requests lost, time to eject and to re-admit) are printed.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ChildProcess, ServerProcess, free_port
from tests.ledger_reader import ledger_rows

UPSTREAM_PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, threads: 1, max_batch: 4, n_ctx: 1024}
"""
UPSTREAM_ROUTING = "features:\n  direct: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0}\n"
POOL_PROFILE = """devices: {{cpu: {{kind: cpu}}}}
tiers:
  2:
    runner: vllm
    model: "tier:3"
    health_failures: 2
    restart: {{backoff_s: 0.5, backoff_max_s: 2, check_interval_s: 0.5}}
    ejection: {{after_failures: 1, cooldown_s: 60}}
    replicas:
      - {{name: a, url: "http://127.0.0.1:{a}/v1"}}
      - {{name: b, url: "http://127.0.0.1:{b}/v1"}}
"""
POOL_ROUTING = """features:
  pooled: {tier: 2, value: internal, owner: ops, failure_cost_usd: 1}
"""
CLIENTS, STREAMING = 8, 2


def upstream(root, port: int, name: str) -> ChildProcess:
    return ChildProcess([sys.executable, "-m", "tiers", "serve", "--port", str(port), "--profile",
                         str(root / "upstream.yaml"), "--routing", str(root / "upstream-routing.yaml"), "--data-dir",
                         str(root / f"data-{name}")], port=port, log_path=root / f"upstream-{name}-{time.time():.0f}.log")


@dataclass
class Outcome:
    started: float
    ended: float
    stream: bool
    status: int
    replica: str | None
    request_id: str | None
    error: str = ""


@dataclass
class Timeline:
    killed: float = 0.0
    restarted: float = 0.0
    upstream_ready: float = 0.0
    ejected: float | None = None
    readmitted: float | None = None
    ready_while_ejected: list[str] = field(default_factory=list)


async def ask(client: httpx.AsyncClient, i: int, stream: bool) -> Outcome:
    body = {"model": "feature:pooled", "messages": [{"role": "user", "content": f"Name a colour ({i})."}],
            "max_tokens": 12, "temperature": 0, "stream": stream}
    started = time.monotonic()
    try:
        if not stream:
            r = await client.post("/v1/chat/completions", json=body)
            text = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else r.text
            return Outcome(started, time.monotonic(), False, r.status_code, r.headers.get("x-replica"),
                           r.headers.get("x-request-id"), "" if r.status_code == 200 and text else text)
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            error, done = "", False
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]" and "error" in json.loads(line[6:]):
                    error = line
                done = done or line == "data: [DONE]"
            return Outcome(started, time.monotonic(), True, r.status_code if done and not error else 599,
                           r.headers.get("x-replica"), r.headers.get("x-request-id"), error)
    except httpx.HTTPError as exc:
        return Outcome(started, time.monotonic(), stream, 598, None, None, repr(exc))


async def drive(base_url: str, stop: asyncio.Event, outcomes: list[Outcome]) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                outcomes.append(await ask(client, w * 10_000 + i, stream=w < STREAMING))
                i += 1

        await asyncio.gather(*(worker(w) for w in range(CLIENTS)))


async def watch(base_url: str, stop: asyncio.Event, timeline: Timeline) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        while not stop.is_set():
            body = (await client.get("/ready")).json()
            tier = body["tiers"]["2"]
            a = next(r for r in tier["replicas"] if r["name"] == "a")
            now = time.monotonic()
            if timeline.killed and timeline.ejected is None and a["state"] != "ready":
                timeline.ejected = now
                timeline.ready_while_ejected.append(f"{tier['state']}/{body['status']}/{a['state']}")
            if timeline.ejected is not None and timeline.restarted and timeline.readmitted is None \
                    and a["state"] == "ready":
                timeline.readmitted = now
            await asyncio.sleep(0.05)


def share(outcomes: list[Outcome]) -> dict[str, float]:
    served = [o.replica for o in outcomes if o.status == 200]
    return {name: round(served.count(name) / max(1, len(served)), 3) for name in ("a", "b")}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    (root / "upstream.yaml").write_text(UPSTREAM_PROFILE)
    (root / "upstream-routing.yaml").write_text(UPSTREAM_ROUTING)
    (root / "routing.yaml").write_text(POOL_ROUTING)
    return root


def test_a_pool_of_two_servers_balances_survives_a_sigkill_and_readmits(root):
    ports = {"a": free_port(), "b": free_port()}
    upstreams = {name: upstream(root, port, name) for name, port in ports.items()}
    (root / "profile.yaml").write_text(POOL_PROFILE.format(**ports))
    gateway = None
    try:
        for proc in upstreams.values():
            proc.wait_ready()
        gateway = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                                log_path=root / "pool.log")
        gateway.wait_ready()
        ready = httpx.get(f"{gateway.base_url}/ready").json()["tiers"]["2"]
        assert [r["state"] for r in ready["replicas"]] == ["ready", "ready"] and ready["min_ready"] == 1
        outcomes: list[Outcome] = []
        timeline = Timeline()

        async def scenario() -> None:
            stop = asyncio.Event()
            tasks = [asyncio.create_task(drive(gateway.base_url, stop, outcomes)),
                     asyncio.create_task(watch(gateway.base_url, stop, timeline))]
            while sum(o.status == 200 for o in outcomes) < 24:
                await asyncio.sleep(0.1)
            upstreams["a"].proc.kill()  # SIGKILL, mid-traffic
            timeline.killed = time.monotonic()
            upstreams["a"].proc.wait()
            upstreams["a"].log.close()
            await asyncio.sleep(4)  # serving from b alone meanwhile
            timeline.restarted = time.monotonic()
            upstreams["a"] = upstream(root, ports["a"], "a")
            await asyncio.to_thread(upstreams["a"].wait_ready)
            timeline.upstream_ready = time.monotonic()
            deadline = time.monotonic() + 60
            while timeline.readmitted is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(4)  # traffic on both again
            stop.set()
            await asyncio.gather(*tasks)

        asyncio.run(scenario())
        before = [o for o in outcomes if o.ended < timeline.killed]
        during = [o for o in outcomes if timeline.killed + 1 < o.started and o.ended < timeline.restarted]
        after = [o for o in outcomes if timeline.readmitted and o.started > timeline.readmitted]
        failed = [o for o in outcomes if o.status != 200]
        lost = [o for o in failed if o.stream and o.replica == "a" and o.started < timeline.killed]
        print(f"\npool figures: {len(outcomes)} requests by {CLIENTS} clients ({STREAMING} streaming); share before "
              f"the kill {share(before)}, while a was down {share(during)}, after re-admission {share(after)}; "
              f"failed {len(failed)} (streams begun on a before the kill: {len(lost)}); ejected "
              f"{(timeline.ejected or 0) - timeline.killed:.2f} s after the SIGKILL; re-admitted "
              f"{(timeline.readmitted or 0) - timeline.upstream_ready:.2f} s after the restarted server was ready "
              f"({(timeline.readmitted or 0) - timeline.restarted:.2f} s after it was started again); "
              f"/ready meanwhile (tier/gateway/replica a): {timeline.ready_while_ejected}")
        assert min(share(before).values()) >= 0.25, share(before)
        assert failed == lost, [o.__dict__ for o in failed if o not in lost]
        assert timeline.ejected is not None and timeline.ready_while_ejected[0].startswith("ready/ready/")
        assert timeline.readmitted is not None, gateway.output()[-3000:]
        assert share(during) == {"a": 0.0, "b": 1.0} and during
        assert share(after)["a"] > 0, share(after)
        replicas = {r["request_id"]: r["replica"] for r in ledger_rows(gateway) if r["final"]}
        answered = [o for o in outcomes if o.status == 200]
        assert all(replicas.get(o.request_id) == o.replica for o in answered), \
            [o.__dict__ for o in answered if replicas.get(o.request_id) != o.replica][:3]
        metrics = httpx.get(f"{gateway.base_url}/metrics").text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(metrics) for s in family.samples}
        assert samples[("tier_replica_state", (("replica", "a"), ("state", "ready"), ("tier", "2")))] == 1.0
        assert samples[("tier_requests_total", (("feature", "pooled"), ("model", "tier:3"), ("replica", "b"),
                                                ("tier", "2")))] > 0
    finally:
        if gateway is not None:
            gateway.stop()
        for proc in upstreams.values():
            proc.stop()
