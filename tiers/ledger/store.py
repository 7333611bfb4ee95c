"""Writes that never block a response and are never lost: an append-only spool, then the database.

A row is appended to a spool file (a write to the page cache, no fsync) before the response is sent,
so it survives a crash or SIGKILL of the gateway; a writer thread moves spooled rows into SQLite or
PostgreSQL in batches, idempotently (attempt_id is the primary key), and deletes a spool file only
after its rows are committed. If the database is unavailable, rows stay spooled and are replayed once
it is back. An operating-system crash or power loss can still lose rows not yet flushed to disk.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, exists, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from runners.errors import InvalidRequest
from tiers.errors import NotFound
from tiers.ledger import schema
from tiers.ledger.migrations import migrate
from tiers.ledger.rows import LedgerRow

log = logging.getLogger("tier_runner.ledger")

FEEDBACK_OUTCOMES = ("accepted", "corrected", "escalated_to_human", "negative")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(dbapi_connection, _record):  # WAL: readers never block the writer
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class Ledger:
    def __init__(self, url: str, spool_dir: Path, *, flush_interval_s: float = 0.2):
        self.url = url
        self.engine = make_engine(url)
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.flush_interval_s = flush_interval_s
        self._append_lock = threading.Lock()
        self._spool = self._open_spool()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushed = threading.Condition()
        self._generation = 0  # bumps each time the writer finishes a pass
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.migrate()
        self._thread = threading.Thread(target=self._run, name="ledger-writer", daemon=True)
        self._thread.start()

    def migrate(self) -> list[int]:
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(726173)"))  # replicas migrate one at a time
            return migrate(conn)

    def close(self, timeout: float = 30) -> None:
        """Drain the spool into the database, then stop; rows left over stay spooled for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._append_lock:
            self._spool.close()
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------
    def record(self, rows: Iterable[LedgerRow]) -> None:
        """Called on the request path: append to the spool and return at once. The writer wakes on its
        own every flush_interval_s and loads everything spooled since in one transaction; waking it per
        request would cost a file rotation and a commit per request, on the request's time."""
        lines = "".join(row.model_dump_json() + "\n" for row in rows)
        with self._append_lock:
            self._spool.write(lines)
            self._spool.flush()  # into the page cache: survives the process, not the machine

    def flush(self, timeout: float = 10) -> bool:
        """Wait until everything spooled so far is in the database (False if it is not reachable)."""
        with self._flushed:
            target = self._generation + 2  # a full pass that started after this call
            self._wake.set()
            return self._flushed.wait_for(lambda: self._generation >= target, timeout)

    def _open_spool(self):
        return (self.spool_dir / "current.jsonl").open("a", encoding="utf-8")

    def _rotate(self) -> None:
        """Move the current spool aside so the writer can load it while new rows go to a fresh file."""
        with self._append_lock:
            current = self.spool_dir / "current.jsonl"
            if current.stat().st_size == 0:
                return
            self._spool.close()
            current.rename(self.spool_dir / f"pending-{time.time_ns()}.jsonl")
            self._spool = self._open_spool()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            try:
                self._rotate()
                for pending in sorted(self.spool_dir.glob("pending-*.jsonl")):
                    self._load(pending)
                    pending.unlink()
            except (SQLAlchemyError, OSError) as exc:
                if self.last_error is None:
                    log.error("ledger database unavailable, rows stay spooled in %s: %s", self.spool_dir,
                              exc.__class__.__name__)
                self.last_error = exc.__class__.__name__
                if stopping:
                    return
                time.sleep(min(1.0, self.flush_interval_s * 5))
                continue
            if self.last_error is not None:
                log.info("ledger database reachable again; spooled rows replayed")
                self.last_error = None
            with self._flushed:  # only a pass that emptied the spool counts for flush()
                self._generation += 1
                self._flushed.notify_all()
            if stopping:
                return

    def _load(self, path: Path) -> None:
        rows = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.endswith("\n"):  # a torn last line (killed mid-write) was never answered
                    rows.append(json.loads(line))
        if not rows:
            return
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(schema.attempts)
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 500):
                conn.execute(insert.on_conflict_do_nothing(index_elements=["attempt_id"]), rows[start:start + 500])

    # -- feedback ----------------------------------------------------------------------------
    def add_feedback(self, request_id: str, outcome: str, note: str | None) -> None:
        if outcome not in FEEDBACK_OUTCOMES:
            raise InvalidRequest(f"outcome must be one of {', '.join(FEEDBACK_OUTCOMES)}", param="outcome")
        self.flush()
        with self.engine.begin() as conn:
            known = conn.execute(select(exists().where(schema.attempts.c.request_id == request_id))).scalar()
            if not known:
                raise NotFound(f"no request {request_id!r} in the ledger; use the x-request-id of a response",
                               param="request_id")
            conn.execute(schema.feedback.insert().values(request_id=request_id, outcome=outcome, note=note,
                                                         ts=time.time()))

    def purge_expired_text(self, now: float | None = None) -> int:
        """Stored prompts and completions are kept only until their retention ends."""
        now = now or time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                schema.attempts.update()
                .where(schema.attempts.c.text_expires_at < now)
                .values(prompt_text=None, completion_text=None, text_expires_at=None)
            )
            return result.rowcount
