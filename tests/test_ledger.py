"""The ledger on real SQLite and a real PostgreSQL: schema, durable writes, replay, feedback, maths."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa

from runners.errors import InvalidRequest
from tiers.errors import NotFound
from tiers.budgets import SpendMeter
from tiers.ledger import schema
from tiers.ledger.rows import LedgerRow, new_attempt_id, rows_for_attempts
from tiers.ledger.stats import Rate, effective_cost, wilson_interval
from tiers.ledger.store import Ledger

EXPECTED_COLUMNS = {
    "attempt_id", "request_id", "parent_id", "attempt_no", "final", "ts", "route", "feature", "declared_tier",
    "serving_tier", "runner", "model", "client_key_id", "prompt_tokens", "completion_tokens", "ttft_ms",
    "latency_ms", "cost_usd", "cache_hit", "cache_similarity", "gate", "gate_passed", "gate_reason", "escalated",
    "downgraded", "error_type", "http_status", "prompt_text", "completion_text", "text_expires_at",
    "api", "tool_calls", "gate_spec", "feature_spec", "shadow_of", "shadow_agreed", "replica",
}


def row(request_id: str = "req_1", **fields) -> LedgerRow:
    return LedgerRow(attempt_id=new_attempt_id(), request_id=request_id, ts=time.time(), route="feature:f",
                     feature="f", serving_tier=3, model="m", **fields)


def count(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(schema.attempts)).scalar()


def test_migrating_a_blank_database_creates_every_column(ledger_url, tmp_path):
    ledger = Ledger(ledger_url, tmp_path / "spool")
    assert ledger.migrate() == [1, 2, 3, 4]
    assert ledger.migrate() == []  # applied migrations are recorded, never rerun
    inspector = sa.inspect(ledger.engine)
    assert {c["name"] for c in inspector.get_columns("attempts")} == EXPECTED_COLUMNS
    assert {c["name"] for c in inspector.get_columns("feedback")} == {"id", "request_id", "outcome", "note", "ts"}
    ledger.close()


def test_rows_reach_the_database_and_replays_are_idempotent(ledger_url, tmp_path):
    ledger = Ledger(ledger_url, tmp_path / "spool")
    ledger.start()
    rows = rows_for_attempts("req_a", "feature:f", "f", 2, [
        {"serving_tier": 2, "model": "small", "gate": "json_schema", "gate_passed": False},
        {"serving_tier": 1, "model": "big", "escalated": True, "gate": "json_schema", "gate_passed": True},
    ])
    ledger.record(rows)
    assert ledger.flush()
    ledger.record(rows)  # the same attempts again, as after a crash between commit and spool deletion
    assert ledger.flush()
    assert count(ledger) == 2
    with ledger.engine.connect() as conn:
        stored = conn.execute(sa.select(schema.attempts).order_by(schema.attempts.c.attempt_no)).mappings().all()
    assert stored[1]["parent_id"] == stored[0]["attempt_id"]
    assert [r["final"] for r in stored] == [False, True]
    ledger.close()


def test_feedback_needs_a_known_request_and_a_known_outcome(ledger_url, tmp_path):
    ledger = Ledger(ledger_url, tmp_path / "spool")
    ledger.start()
    ledger.record([row("req_known")])
    ledger.add_feedback("req_known", "negative", "wrong queue")
    with pytest.raises(NotFound):
        ledger.add_feedback("req_unknown", "negative", None)
    with pytest.raises(InvalidRequest):
        ledger.add_feedback("req_known", "meh", None)
    ledger.close()


def test_rows_spooled_by_a_killed_process_are_loaded_at_the_next_start(ledger_url, tmp_path):
    spool = tmp_path / "spool"
    script = textwrap.dedent(f"""
        import os, signal, time
        from tiers.ledger.store import Ledger
        from tiers.ledger.rows import LedgerRow
        ledger = Ledger({ledger_url!r}, {str(spool)!r}, flush_interval_s=3600)
        ledger.migrate()
        for i in range(50):
            ledger.record([LedgerRow(attempt_id=f"att_{{i}}", request_id=f"req_{{i}}", ts=time.time(), route="tier:3")])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == -9, result.stderr
    ledger = Ledger(ledger_url, spool)
    assert count(ledger) == 0  # nothing reached the database before the kill
    ledger.start()
    assert ledger.flush()
    assert count(ledger) == 50
    ledger.close()


def test_database_down_rows_stay_spooled_and_are_replayed(postgres, fresh_postgres_url, tmp_path):
    ledger = Ledger(fresh_postgres_url, tmp_path / "spool", flush_interval_s=0.05)
    ledger.start()
    postgres.halt()
    try:
        ledger.record([row(f"req_{i}") for i in range(20)])
        assert not ledger.flush(timeout=2)
        assert ledger.last_error is not None
    finally:
        postgres.launch()
    assert ledger.flush(timeout=20)
    assert ledger.last_error is None
    assert count(ledger) == 20
    ledger.close()


@pytest.mark.parametrize(("failures", "n", "low", "high"), [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (1, 100, 0.0018, 0.0545), (30, 100, 0.2189, 0.3958),
])
def test_wilson_interval_matches_published_values(failures, n, low, high):
    got_low, got_high = wilson_interval(failures, n)
    assert got_low == pytest.approx(low, abs=1e-4) and got_high == pytest.approx(high, abs=1e-4)


def test_rates_say_when_there_is_too_little_data():
    assert str(Rate(0, 0)) == "no data"
    assert str(Rate(3, 10)).endswith("(few samples)")
    assert "few" not in str(Rate(30, 100))


def test_effective_cost_per_success_counts_failures():
    # the article's 70% example: 100 calls at $0.01 with 70 successes cost 43% more per success than per call
    assert effective_cost(spend=1.00, failures=30, successes=70, failure_cost_usd=0) == pytest.approx(0.01 * 1.4286,
                                                                                                        abs=1e-6)
    # and each failure's own cost (human review, rework) is added before dividing
    assert effective_cost(spend=1.00, failures=30, successes=70, failure_cost_usd=5) == pytest.approx(151 / 70)
    assert effective_cost(1.0, 5, 0, 10) is None


def test_spend_is_read_and_refreshed_in_the_background_while_the_last_figure_answers(ledger_url, tmp_path):
    ledger = Ledger(ledger_url, tmp_path / "spool")
    ledger.start()
    ledger.record([row(cost_usd=0.5)])
    assert ledger.flush()
    meter = SpendMeter(ledger, refresh_s=0)

    def eventually(usd: float) -> None:
        deadline = time.monotonic() + 10
        while meter.spent("feature", "f", "day") != pytest.approx(usd):
            assert time.monotonic() < deadline, "the background read never landed"
            time.sleep(0.05)

    eventually(0.5)  # the period's first check answers from what this process booked (nothing) and reads
    ledger.record([row("req_2", cost_usd=0.25)])  # spent elsewhere (another replica): not booked in this meter
    assert ledger.flush()
    eventually(0.75)
    ledger.close()


def test_spec_hash_is_short_canonical_and_changes_with_any_argument():
    from tiers.ledger.rows import spec_hash

    gate = {"name": "json_schema", "args": {"schema": {"type": "object", "required": ["a"]}}}
    same = {"args": {"schema": {"required": ["a"], "type": "object"}}, "name": "json_schema"}
    assert spec_hash(gate) == spec_hash(same) and len(spec_hash(gate)) == 12
    assert int(spec_hash(gate), 16) >= 0
    assert spec_hash(gate) != spec_hash({"name": "json_schema", "args": {"schema": {"type": "object"}}})


def test_feedback_on_a_peer_gateways_answer_waits_for_its_row(ledger_url, tmp_path):
    """Workers (and replicas) write one database from spools of their own: feedback that reaches one of them
    right after another answered waits for the row the other has not loaded yet, instead of a 404."""
    import threading

    mine = Ledger(ledger_url, tmp_path / "mine", peers=True)
    peer = Ledger(ledger_url, tmp_path / "peer")
    mine.start()
    timer = threading.Timer(0.5, lambda: (peer.start(), peer.record([row("req_peer")])))
    timer.start()
    mine.add_feedback("req_peer", "accepted", None)  # the row arrives 0.5 s later, from the peer's spool
    timer.join()
    alone = Ledger(ledger_url, tmp_path / "alone")  # a gateway without peers answers at once
    with pytest.raises(NotFound):
        alone.add_feedback("req_unknown", "accepted", None)
    with mine.engine.connect() as conn:
        assert conn.execute(sa.select(schema.feedback.c.request_id)).scalars().all() == ["req_peer"]
    for ledger in (mine, peer, alone):
        ledger.close()
