"""Ledger tables as they are after the last migration (SQLAlchemy Core): one code path for SQLite and PostgreSQL.

This is what the code reads and writes; the tables themselves are made only by the numbered migrations in
`migrations.py`, and a column added here needs a migration that adds it.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

attempts = Table(
    "attempts",
    metadata,
    Column("attempt_id", String(40), primary_key=True),
    Column("request_id", String(40), nullable=False, index=True),
    Column("parent_id", String(40)),
    Column("attempt_no", Integer, nullable=False),
    Column("final", Boolean, nullable=False),
    Column("ts", Float, nullable=False, index=True),
    Column("route", String(80), nullable=False),
    Column("api", String(16), nullable=False, server_default="chat"),
    Column("feature", String(64), index=True),
    Column("feature_spec", String(12)),
    Column("declared_tier", Integer),
    Column("serving_tier", Integer),
    Column("runner", String(32)),
    Column("replica", String(32)),
    Column("model", String(200)),
    Column("client_key_id", String(64)),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("tool_calls", Integer, nullable=False, server_default="0"),
    Column("ttft_ms", Float),
    Column("latency_ms", Float, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("cache_hit", Boolean, nullable=False),
    Column("cache_similarity", Float),
    Column("gate", String(120)),
    Column("gate_spec", String(12)),
    Column("gate_passed", Boolean),
    Column("gate_reason", String(120)),
    Column("escalated", Boolean, nullable=False),
    Column("downgraded", Boolean, nullable=False),
    Column("error_type", String(64)),
    Column("http_status", Integer, nullable=False),
    Column("prompt_text", Text),
    Column("completion_text", Text),
    Column("text_expires_at", Float),
    Column("shadow_of", String(64), index=True),
    Column("shadow_agreed", Boolean),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(40), nullable=False, index=True),
    Column("outcome", String(32), nullable=False),
    Column("note", Text),
    Column("ts", Float, nullable=False),
)

migrations_applied = Table(
    "ledger_migrations",
    metadata,
    Column("number", Integer, primary_key=True),
    Column("name", String(120), nullable=False),
    Column("applied_at", Float, nullable=False),
)
