"""Migrations on real SQLite and a real PostgreSQL: each one frozen as shipped, and every older database
brought up to date one migration at a time, its rows kept."""

from __future__ import annotations

import time

import sqlalchemy as sa

from tiers.ledger.migrations import MIGRATIONS, migrate
from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.store import Ledger, make_engine

# The attempts table as each migration left it. A shipped migration is never edited, so these never change.
COLUMNS_AT = {
    1: {"attempt_id", "request_id", "parent_id", "attempt_no", "final", "ts", "route", "feature", "declared_tier",
        "serving_tier", "runner", "model", "client_key_id", "prompt_tokens", "completion_tokens", "ttft_ms",
        "latency_ms", "cost_usd", "cache_hit", "cache_similarity", "gate", "gate_passed", "gate_reason", "escalated",
        "downgraded", "error_type", "http_status", "prompt_text", "completion_text", "text_expires_at"},
}
COLUMNS_AT[2] = COLUMNS_AT[1] | {"api", "tool_calls", "gate_spec", "feature_spec"}
COLUMNS_AT[3] = COLUMNS_AT[2] | {"shadow_of", "shadow_agreed"}
COLUMNS_AT[4] = COLUMNS_AT[3] | {"replica"}
LATEST = max(number for number, _, _ in MIGRATIONS)


def columns(engine: sa.Engine) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns("attempts")}


def drop_everything(engine: sa.Engine) -> None:
    tables = sa.MetaData()
    tables.reflect(engine)
    tables.drop_all(engine)


def test_every_migration_is_listed_with_its_columns():
    assert sorted(number for number, _, _ in MIGRATIONS) == list(range(1, LATEST + 1)) == sorted(COLUMNS_AT)


def test_migration_1_creates_the_columns_it_shipped_with_whatever_the_live_schema_says(ledger_url):
    engine = make_engine(ledger_url)
    with engine.begin() as conn:
        assert migrate(conn, upto=1) == [1]
    assert columns(engine) == COLUMNS_AT[1]
    engine.dispose()


def test_a_database_at_each_older_version_migrates_one_step_at_a_time_and_keeps_its_rows(ledger_url, tmp_path):
    engine = make_engine(ledger_url)
    for version in range(0, LATEST):
        drop_everything(engine)
        with engine.begin() as conn:
            assert migrate(conn, upto=version) == list(range(1, version + 1))
        if version:  # a row as that version wrote it, through the table as that version left it
            old = sa.Table("attempts", sa.MetaData(), autoload_with=engine)
            values = {"attempt_id": f"att_v{version}", "request_id": f"req_v{version}", "attempt_no": 1, "final": True,
                      "ts": time.time(), "route": "tier:3", "prompt_tokens": 1, "completion_tokens": 2,
                      "latency_ms": 3.0, "cost_usd": 0.5, "cache_hit": False, "escalated": False, "downgraded": False,
                      "http_status": 200}
            with engine.begin() as conn:
                conn.execute(old.insert().values(**values))
        for step in range(version + 1, LATEST + 1):
            with engine.begin() as conn:
                assert migrate(conn, upto=step) == [step]
            assert columns(engine) == COLUMNS_AT[step]
        with engine.begin() as conn:
            assert migrate(conn) == []
        if version:
            with engine.connect() as conn:
                kept = conn.execute(sa.text("SELECT * FROM attempts")).mappings().one()
            assert (kept["request_id"], kept["cost_usd"], kept["api"], kept["tool_calls"]) == (
                f"req_v{version}", 0.5, "chat", 0)
    engine.dispose()
    ledger = Ledger(ledger_url, tmp_path / "spool")  # and today's rows go into the migrated tables
    ledger.start()
    ledger.record([LedgerRow(attempt_id=new_attempt_id(), request_id="req_new", ts=time.time(), route="feature:f",
                             api="messages", tool_calls=2, gate_spec="0123456789ab", feature_spec="ba9876543210")])
    assert ledger.flush()
    with ledger.engine.connect() as conn:
        new = conn.execute(sa.text("SELECT * FROM attempts WHERE request_id = 'req_new'")).mappings().one()
    assert (new["api"], new["tool_calls"], new["gate_spec"], new["feature_spec"]) == (
        "messages", 2, "0123456789ab", "ba9876543210")
    ledger.close()
