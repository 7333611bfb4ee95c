"""The ledger rows of a test server started with its default SQLite ledger (in its data dir)."""

from __future__ import annotations

import httpx
import sqlalchemy as sa

from tiers.ledger import schema


def ledger_rows(server) -> list[dict]:
    httpx.get(f"{server.base_url}/v1/audit", timeout=30)  # flushes the spool first
    engine = sa.create_engine(f"sqlite:///{server.data_dir / 'ledger.db'}")
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(schema.attempts))]
    engine.dispose()
    return rows
