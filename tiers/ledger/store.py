"""Writes that never block a response and are never lost: an append-only spool, then the database.

A row is appended to a spool file (a write to the page cache, no fsync) before the response is sent,
so it survives a crash or SIGKILL of the gateway; a writer thread moves spooled rows into SQLite or
PostgreSQL in batches, idempotently (attempt_id is the primary key), and deletes a spool file only
after its rows are committed. If the database is unavailable, rows stay spooled and are replayed once
it is back. An operating-system crash or power loss can still lose rows not yet flushed to disk.

One bad line never stops the ledger: a line that is not a row, or a row the database refuses, goes to
the spool's dead-letter file with the reason and the writer moves on. The writer also erases stored
prompt and completion text whose retention has ended, at start and every `purge_interval_s`.
`health()` says whether all of this is working, for /ready and the metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Engine, create_engine, event, exists, select, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError, StatementError

from hardware.errors import ConfigError
from hardware.extras import require_extra
from runners.errors import InvalidRequest
from tiers.errors import LedgerUnavailable, NotFound
from tiers.ledger import schema
from tiers.ledger.migrations import migrate
from tiers.ledger.rows import LedgerRow
from tiers.ledger.spool import Spool

log = logging.getLogger("tier_runner.ledger")

FEEDBACK_OUTCOMES = ("accepted", "corrected", "escalated_to_human", "negative")
BATCH = 500
PEER_WAIT_S = 1.5  # a peer's writer loads its spool every 0.2 s; feedback waits this long for its row before 404


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
    if url.startswith("postgresql+psycopg:"):
        require_extra("psycopg", "postgres", "a PostgreSQL ledger (--ledger-url postgresql+psycopg://...)")
    try:
        return create_engine(url, pool_pre_ping=True)
    except (ImportError, ValueError, SQLAlchemyError) as exc:
        raise ConfigError(f"the ledger URL is not usable ({exc.__class__.__name__}: {exc}); give a SQLAlchemy URL "
                          "such as postgresql+psycopg://user@host/db or sqlite:////path/ledger.db") from None


def insert_sql(paramstyle: str) -> str:
    """INSERT of one attempt row with named parameters in the driver's own style; a row already there (replayed
    after a crash between commit and spool deletion) is skipped, on SQLite and PostgreSQL alike."""
    names = [c.name for c in schema.attempts.columns]
    mark = "%({})s" if paramstyle == "pyformat" else ":{}"
    return (f"INSERT INTO attempts ({', '.join(names)}) VALUES ({', '.join(mark.format(n) for n in names)}) "
            "ON CONFLICT (attempt_id) DO NOTHING")


def refused_row(exc: Exception) -> bool:
    """The database refused this row's values (too long, out of range, a constraint), as opposed to not being
    reachable: retrying the row cannot help, retrying the connection can."""
    return isinstance(exc, (DataError, IntegrityError)) or (isinstance(exc, StatementError)
                                                            and not isinstance(exc, DBAPIError))


def reason_of(exc: Exception) -> str:
    """The driver's first line, without SQLAlchemy's echo of the statement and its parameters."""
    inner = getattr(exc, "orig", None) or exc
    first = (str(inner).strip().splitlines() or [""])[0]
    return f"{inner.__class__.__name__}: {first}"[:300]


class Ledger:
    def __init__(self, url: str, spool: Path | Spool, *, flush_interval_s: float = 0.2, purge_interval_s: float = 3600,
                 peers: bool = False):
        """`peers`: other processes (workers, replicas) write this database from spools of their own, so a request
        one of them answered a moment ago may not be in it yet."""
        self.url = url
        self.peers = peers
        self.engine = make_engine(url)
        self.spool = spool if isinstance(spool, Spool) else Spool(spool)
        self.flush_interval_s = flush_interval_s
        self.purge_interval_s = purge_interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushed = threading.Condition()
        self._generation = 0  # bumps each time the writer finishes a pass that emptied the spool
        self._thread: threading.Thread | None = None
        self._next_purge = 0.0  # the first pass purges
        self.last_error: str | None = None  # why the last pass failed; None while the database takes rows
        self._died: str | None = None
        self._insert_sql = insert_sql(self.engine.dialect.paramstyle)

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
        self.spool.close()
        self.engine.dispose()

    def health(self) -> dict:
        """state ok | degraded (the database does not take rows: they stay spooled) | failed (the writer
        stopped: rows are spooled but none will reach the database until a restart); dead_letters counts
        the lines set aside in the spool's dead-letter file, this run and earlier ones."""
        dead = self.spool.dead_letters
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            state, detail = "failed", f"the ledger writer stopped ({self._died or 'unknown'}); restart the gateway"
        elif self.last_error:
            state, detail = "degraded", f"rows stay spooled in {self.spool.folder}: {self.last_error}"
        else:
            state, detail = "ok", ""
        if dead:
            detail = (detail + "; " if detail else "") + f"{dead} line(s) set aside in {self.spool.dead_letter_path}"
        return {"state": state, "detail": detail, "dead_letters": dead}

    def note_unreachable(self, what: str, exc: Exception) -> None:
        """Another reader of the ledger (the spend meters) found the database down: show it until a pass works."""
        if self.last_error is None:
            log.error("ledger database unavailable (%s): %s", what, reason_of(exc))
        self.last_error = reason_of(exc)

    # -- writing ---------------------------------------------------------------------------
    def record(self, rows: Iterable[LedgerRow]) -> None:
        """Called on the request path: append to the spool and return at once. The writer wakes on its
        own every flush_interval_s and loads everything spooled since in one transaction; waking it per
        request would cost a file rotation and a commit per request, on the request's time."""
        self.spool.append("".join(row.model_dump_json() + "\n" for row in rows))

    def flush(self, timeout: float = 10) -> bool:
        """Wait until everything spooled so far is in the database (False if it is not reachable)."""
        with self._flushed:
            target = self._generation + 2  # a full pass that started after this call
            self._wake.set()
            return self._flushed.wait_for(lambda: self._generation >= target, timeout)

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.flush_interval_s)
                self._wake.clear()
                stopping = self._stop.is_set()
                if self._pass():
                    with self._flushed:  # only a pass that emptied the spool counts for flush()
                        self._generation += 1
                        self._flushed.notify_all()
                elif not stopping:
                    time.sleep(min(1.0, self.flush_interval_s * 5))
                if stopping:
                    return
        except BaseException as exc:  # the one way out besides close(): health() shows it as failed
            self._died = f"{exc.__class__.__name__}: {exc}"
            log.critical("the ledger writer stopped: %s; rows stay spooled in %s", self._died, self.spool.folder,
                         exc_info=True)

    def _pass(self) -> bool:
        """Load every spooled row, then purge expired text when due; True when all of it worked."""
        try:
            self.spool.rotate()
            pending = self.spool.pending()
            for path in pending:
                self._load(path)
                path.unlink()
            if not pending and self.last_error is not None:
                with self.engine.connect() as conn:  # nothing to write: ask the database whether it is back
                    conn.execute(text("SELECT 1"))
            if time.monotonic() >= self._next_purge:
                self.purge_expired_text()
                self._next_purge = time.monotonic() + self.purge_interval_s
        except Exception as exc:  # the database is down, or a bug: rows stay spooled; either way it shows
            if self.last_error is None:
                log.error("ledger database unavailable, rows stay spooled in %s: %s", self.spool.folder, reason_of(exc),
                          exc_info=not isinstance(exc, (SQLAlchemyError, OSError)))
            self.last_error = reason_of(exc)
            return False
        if self.last_error is not None:
            log.info("ledger database reachable again; spooled rows replayed")
            self.last_error = None
        return True

    def _load(self, path: Path) -> None:
        """Commit the file's rows; its bad lines and refused rows go to the dead-letter file after the commit,
        so a pass that fails midway leaves the file whole for the next one."""
        rows, bad = [], []
        for number, (line, whole) in enumerate(Spool.lines(path), start=1):
            if not whole:
                bad.append((line, f"line {number} is torn (no end of line): the writing process stopped mid-row"))
                continue
            if not line.strip():
                continue
            try:
                rows.append(LedgerRow.model_validate_json(line).model_dump())
            except ValidationError as exc:
                bad.append((line, f"line {number} is not a ledger row: {exc.errors(include_url=False)[0]['msg']}"))
        bad += self._insert(rows)
        for line, reason in bad:
            log.error("ledger: set aside a spooled line from %s: %s", path.name, reason)
            self.spool.dead_letter(path, line, reason)

    def _insert(self, rows: list[dict]) -> list[tuple[str, str]]:
        """Insert in batches; a batch the database refuses is retried row by row to find the refused rows,
        which are returned (as JSON lines and reasons) instead of stopping the ledger."""
        refused = []
        for start in range(0, len(rows), BATCH):
            batch = rows[start:start + BATCH]
            try:
                self._execute(batch)
            except SQLAlchemyError as exc:
                if not refused_row(exc):
                    raise
                for row in batch:
                    try:
                        self._execute([row])
                    except SQLAlchemyError as one:
                        if not refused_row(one):
                            raise
                        refused.append((LedgerRow(**row).model_dump_json(), f"the database refused it: {reason_of(one)}"))
        return refused

    def _execute(self, rows: list[dict]) -> None:
        """One executemany of the driver itself: the rows are already bounded and typed by LedgerRow, so
        SQLAlchemy's per-row parameter processing would only cost time (it was most of the writer's)."""
        if not rows:
            return
        with self.engine.begin() as conn:
            conn.exec_driver_sql(self._insert_sql, rows)

    # -- feedback ----------------------------------------------------------------------------
    def add_feedback(self, request_id: str, outcome: str, note: str | None) -> None:
        if outcome not in FEEDBACK_OUTCOMES:
            raise InvalidRequest(f"outcome must be one of {', '.join(FEEDBACK_OUTCOMES)}", param="outcome")
        self.flush()
        try:
            deadline = time.monotonic() + (PEER_WAIT_S if self.peers else 0)
            while not (known := self._known(request_id)) and time.monotonic() < deadline:
                time.sleep(0.25)  # still in the spool of the peer that answered it
            if not known:
                raise NotFound(f"no request {request_id!r} in the ledger; use the x-request-id of a response",
                               param="request_id")
            with self.engine.begin() as conn:
                conn.execute(schema.feedback.insert().values(request_id=request_id, outcome=outcome, note=note,
                                                             ts=time.time()))
        except SQLAlchemyError as exc:
            self.note_unreachable("feedback", exc)
            raise LedgerUnavailable("the ledger database is unavailable, so feedback cannot be recorded now; "
                                    "retry later (GET /ready shows the ledger's state)") from None

    def _known(self, request_id: str) -> bool:
        """In a transaction of its own: a SQLite read transaction would go on seeing the snapshot it began with."""
        with self.engine.connect() as conn:
            return bool(conn.execute(select(exists().where(schema.attempts.c.request_id == request_id))).scalar())

    def purge_expired_text(self, now: float | None = None) -> int:
        """Stored prompts and completions are kept only until their retention ends."""
        now = now or time.time()
        with self.engine.begin() as conn:
            result = conn.execute(
                schema.attempts.update()
                .where(schema.attempts.c.text_expires_at < now)
                .values(prompt_text=None, completion_text=None, text_expires_at=None)
            )
            if result.rowcount:
                log.info("ledger: erased stored text of %d attempt(s) past their retention", result.rowcount)
            return result.rowcount
