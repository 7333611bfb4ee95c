"""A reload mid-request, through the real server: the request keeps the route it started with (its tier, its
declared tier in the ledger), and the next request takes the new one."""

from __future__ import annotations

import json

import httpx
import sqlalchemy as sa

from tests.conftest import ServerProcess
from tiers.ledger import schema

PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1}
  2: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1}
"""
ROUTING = "features:\n  moving: {tier: %d, value: internal, owner: ops, failure_cost_usd: 0}\n"


def test_a_stream_keeps_the_route_it_started_with_across_a_reload(tmp_path):
    """docs/operations.md: a reload applies to new requests; a request keeps the route it started with."""
    (tmp_path / "profile.yaml").write_text(PROFILE)
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING % 3)
    server = ServerProcess("--profile", str(tmp_path / "profile.yaml"), "--routing", str(routing),
                           log_path=tmp_path / "server.log")
    try:
        server.wait_ready()
        body = {"model": "feature:moving", "messages": [{"role": "user", "content": "Tell me a story."}],
                "temperature": 0, "min_tokens": 200, "max_tokens": 200, "stream": True,
                "stream_options": {"include_usage": True}}
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as stream:
            assert stream.headers["x-tier"] == "3"
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            routing.write_text(ROUTING % 2)
            reloaded = httpx.post(f"{server.base_url}/admin/reload", timeout=60)
            assert reloaded.status_code == 200, reloaded.text
            events = [first[6:]] + [line[6:] for line in lines if line.startswith("data: ")]
        started = stream.headers["x-request-id"]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 200  # it ran to the end, after the reload
        after = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                           json={**body, "stream": False, "min_tokens": None, "max_tokens": 4})
        assert after.headers["x-tier"] == "2"
        httpx.get(f"{server.base_url}/v1/audit", timeout=60)  # flushes the ledger
        engine = sa.create_engine(f"sqlite:///{server.data_dir / 'ledger.db'}")
        with engine.connect() as conn:
            rows = {r.request_id: r for r in conn.execute(sa.select(schema.attempts))}
        engine.dispose()
        assert (rows[started].declared_tier, rows[started].serving_tier, rows[started].error_type) == (3, 3, None)
        assert (rows[after.headers["x-request-id"]].declared_tier, rows[after.headers["x-request-id"]].serving_tier) \
            == (2, 2)
    finally:
        server.stop()
