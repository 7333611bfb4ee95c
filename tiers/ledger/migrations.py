"""Numbered schema migrations. Applied ones are recorded; a shipped migration is never edited."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Connection, select

from tiers.ledger import schema

MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = []


def migration(number: int, name: str):
    def register(fn: Callable[[Connection], None]) -> Callable[[Connection], None]:
        MIGRATIONS.append((number, name, fn))
        return fn

    return register


@migration(1, "attempts and feedback")
def _m001(conn: Connection) -> None:
    schema.attempts.create(conn)
    schema.feedback.create(conn)


def migrate(conn: Connection) -> list[int]:
    """Apply every migration not yet recorded, in order; returns the numbers applied now."""
    schema.migrations_applied.create(conn, checkfirst=True)
    done = set(conn.execute(select(schema.migrations_applied.c.number)).scalars())
    applied = []
    for number, name, fn in sorted(MIGRATIONS):
        if number in done:
            continue
        fn(conn)
        conn.execute(schema.migrations_applied.insert().values(number=number, name=name, applied_at=time.time()))
        applied.append(number)
    return applied
