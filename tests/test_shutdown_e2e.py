"""A graceful stop through the real server: SIGTERM mid-stream lets the stream finish, then the gateway stops
cleanly with the request's ledger row in the database (the spool drained), not only in the spool."""

from __future__ import annotations

import json
import signal

import httpx
import sqlalchemy as sa

from tests.conftest import ServerProcess
from tiers.ledger import schema


def test_sigterm_lets_an_in_flight_stream_finish_and_drains_the_spool(tmp_path):
    """docs/operations.md: on SIGINT/SIGTERM the gateway drains in-flight requests, then stops every runner;
    docs/ledger.md: a graceful stop drains the spool."""
    server = ServerProcess(log_path=tmp_path / "server.log")
    server.wait_ready()
    body = {"model": "tier:3", "messages": [{"role": "user", "content": "Tell me a story."}], "temperature": 0,
            "min_tokens": 200, "max_tokens": 200, "stream": True, "stream_options": {"include_usage": True}}
    try:
        with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=120) as stream:
            assert stream.status_code == 200, stream.read()
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            server.proc.send_signal(signal.SIGTERM)
            events = [first[6:]] + [line[6:] for line in lines if line.startswith("data: ")]
        request_id = stream.headers["x-request-id"]
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 200
        # uvicorn re-raises the SIGTERM once its graceful shutdown has finished
        assert server.proc.wait(timeout=60) in (0, -signal.SIGTERM), server.output()[-3000:]
        assert "Application shutdown complete" in server.output()
    finally:
        server.stop()
    engine = sa.create_engine(f"sqlite:///{server.data_dir / 'ledger.db'}")
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.attempts).where(schema.attempts.c.request_id == request_id)).one()
    engine.dispose()
    assert row.completion_tokens == 200 and row.error_type is None
