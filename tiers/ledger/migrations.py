"""Numbered schema migrations. Applied ones are recorded; a shipped migration is never edited.

Each migration spells out its own DDL, frozen as it shipped: none reads the live tables in `schema.py`,
so a column added later cannot change what an earlier migration means.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Boolean, Column, Connection, Float, Integer, MetaData, String, Table, Text, select, text

from tiers.ledger import schema

MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = []


def migration(number: int, name: str):
    def register(fn: Callable[[Connection], None]) -> Callable[[Connection], None]:
        MIGRATIONS.append((number, name, fn))
        return fn

    return register


@migration(1, "attempts and feedback")
def _m001(conn: Connection) -> None:
    frozen = MetaData()
    Table(
        "attempts", frozen,
        Column("attempt_id", String(40), primary_key=True),
        Column("request_id", String(40), nullable=False, index=True),
        Column("parent_id", String(40)),
        Column("attempt_no", Integer, nullable=False),
        Column("final", Boolean, nullable=False),
        Column("ts", Float, nullable=False, index=True),
        Column("route", String(80), nullable=False),
        Column("feature", String(64), index=True),
        Column("declared_tier", Integer),
        Column("serving_tier", Integer),
        Column("runner", String(32)),
        Column("model", String(200)),
        Column("client_key_id", String(64)),
        Column("prompt_tokens", Integer, nullable=False),
        Column("completion_tokens", Integer, nullable=False),
        Column("ttft_ms", Float),
        Column("latency_ms", Float, nullable=False),
        Column("cost_usd", Float, nullable=False),
        Column("cache_hit", Boolean, nullable=False),
        Column("cache_similarity", Float),
        Column("gate", String(120)),
        Column("gate_passed", Boolean),
        Column("gate_reason", String(120)),
        Column("escalated", Boolean, nullable=False),
        Column("downgraded", Boolean, nullable=False),
        Column("error_type", String(64)),
        Column("http_status", Integer, nullable=False),
        Column("prompt_text", Text),
        Column("completion_text", Text),
        Column("text_expires_at", Float),
    )
    Table(
        "feedback", frozen,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("request_id", String(40), nullable=False, index=True),
        Column("outcome", String(32), nullable=False),
        Column("note", Text),
        Column("ts", Float, nullable=False),
    )
    frozen.create_all(conn)


@migration(2, "wire api, tool calls, gate and feature spec hashes")
def _m002(conn: Connection) -> None:
    for column in ("api VARCHAR(16) DEFAULT 'chat' NOT NULL", "tool_calls INTEGER DEFAULT 0 NOT NULL",
                   "gate_spec VARCHAR(12)", "feature_spec VARCHAR(12)"):
        conn.execute(text(f"ALTER TABLE attempts ADD COLUMN {column}"))


@migration(3, "shadow rows: the feature a shadow call re-asked, and whether the two answers agreed")
def _m003(conn: Connection) -> None:
    for column in ("shadow_of VARCHAR(64)", "shadow_agreed BOOLEAN"):
        conn.execute(text(f"ALTER TABLE attempts ADD COLUMN {column}"))
    conn.execute(text("CREATE INDEX ix_attempts_shadow_of ON attempts (shadow_of)"))


@migration(4, "replica: the member of a tier's pool that answered")
def _m004(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE attempts ADD COLUMN replica VARCHAR(32)"))


def migrate(conn: Connection, upto: int | None = None) -> list[int]:
    """Apply every migration not yet recorded (up to `upto`, for tests of older versions), in order;
    returns the numbers applied now."""
    schema.migrations_applied.create(conn, checkfirst=True)
    done = set(conn.execute(select(schema.migrations_applied.c.number)).scalars())
    applied = []
    for number, name, fn in sorted(MIGRATIONS):
        if number in done or (upto is not None and number > upto):
            continue
        fn(conn)
        conn.execute(schema.migrations_applied.insert().values(number=number, name=name, applied_at=time.time()))
        applied.append(number)
    return applied
