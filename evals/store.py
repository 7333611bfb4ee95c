"""The results store: SQLite under the data dir, one row per (suite, example, model config), decisions too.

Like the ledger (and llm's logs.db): numbered migrations, applied ones recorded, a shipped one never edited;
`record_result` is the one write path for results. A row is committed as soon as its example is scored, so a
killed run loses at most the examples in flight, and the next run skips every example already scored.

An error or a timeout is not an answer, right or wrong: it says nothing about the model. It is stored (for the
report) but not scored: the next run tries that example again, and rates and promotion leave it out.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from evals.data import data_dir

SCHEMA_VERSION = 1


def _m001_results(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE results (
        suite TEXT NOT NULL, example_id TEXT NOT NULL, config_hash TEXT NOT NULL,
        outcome TEXT NOT NULL, answer TEXT, parsed TEXT, target TEXT,
        latency_ms REAL, prompt_tokens INTEGER NOT NULL DEFAULT 0, completion_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd REAL NOT NULL DEFAULT 0, model TEXT, tier INTEGER, error TEXT, run_id TEXT, ts REAL NOT NULL,
        PRIMARY KEY (suite, example_id, config_hash))""")
    db.execute("""CREATE TABLE configs (config_hash TEXT PRIMARY KEY, label TEXT NOT NULL, config TEXT NOT NULL,
        ts REAL NOT NULL)""")


def _m002_decisions(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,
        tier INTEGER NOT NULL, candidate TEXT NOT NULL, incumbent TEXT NOT NULL, passed INTEGER NOT NULL,
        dry_run INTEGER NOT NULL, applied INTEGER NOT NULL, details TEXT NOT NULL)""")


def _m003_signals(db: sqlite3.Connection) -> None:
    db.execute("""CREATE TABLE signals (suite TEXT NOT NULL, example_id TEXT NOT NULL, config_hash TEXT NOT NULL,
        correct INTEGER NOT NULL, gates_ok INTEGER NOT NULL, mean_logprob REAL, top1_margin REAL, agreement INTEGER,
        samples INTEGER NOT NULL DEFAULT 0, majority_correct INTEGER, majority_gates_ok INTEGER, answer TEXT,
        ts REAL NOT NULL, PRIMARY KEY (suite, example_id, config_hash))""")


MIGRATIONS = [(1, "results", _m001_results), (2, "decisions", _m002_decisions), (3, "gate signals", _m003_signals)]
SIGNAL_COLUMNS = ("example_id", "correct", "gates_ok", "mean_logprob", "top1_margin", "agreement", "samples",
                  "majority_correct", "majority_gates_ok", "answer")
OUTCOMES = ("correct", "wrong", "unparseable", "gate_failure", "error", "timeout")
NOT_SCORED = ("error", "timeout")


@dataclass
class Result:
    suite: str
    example_id: str
    config_hash: str
    outcome: str
    answer: str | None = None
    parsed: str | None = None
    target: str | None = None
    latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model: str | None = None
    tier: int | None = None
    error: str | None = None
    run_id: str | None = None
    ts: float = 0.0

    @property
    def scored(self) -> bool:
        """The model answered (rightly or not); False for errors and timeouts, which are retried."""
        return self.outcome not in NOT_SCORED

    @property
    def failed(self) -> bool:
        return self.scored and self.outcome != "correct"


class ResultStore:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else data_dir() / "evals.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.row_factory = sqlite3.Row
        self.migrate()

    def migrate(self) -> None:
        with self._lock:
            self.db.execute("CREATE TABLE IF NOT EXISTS eval_migrations (number INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                            " applied_at REAL NOT NULL)")
            applied = {r[0] for r in self.db.execute("SELECT number FROM eval_migrations")}
            for number, name, fn in MIGRATIONS:
                if number in applied:
                    continue
                self.db.execute("BEGIN IMMEDIATE")
                try:
                    fn(self.db)
                    self.db.execute("INSERT INTO eval_migrations VALUES (?, ?, ?)", (number, name, time.time()))
                    self.db.execute("COMMIT")
                except BaseException:
                    self.db.execute("ROLLBACK")
                    raise

    def record_config(self, config_hash: str, label: str, config: dict) -> None:
        with self._lock:
            self.db.execute("INSERT OR IGNORE INTO configs VALUES (?, ?, ?, ?)",
                            (config_hash, label, json.dumps(config, sort_keys=True), time.time()))

    def configs(self) -> dict[str, dict]:
        """config hash -> the configuration its results were measured with (route, tier, model, suite, ...)."""
        with self._lock:
            return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT config_hash, config FROM configs")}

    def record_result(self, result: Result) -> None:
        """The one write path for results; committed at once."""
        row = asdict(result)
        row["ts"] = row["ts"] or time.time()
        with self._lock:
            self.db.execute(f"INSERT OR REPLACE INTO results ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                            tuple(row.values()))

    def done_ids(self, suite: str, config_hash: str) -> set[str]:
        """Examples already scored; errors and timeouts are not, so a resumed run tries them again."""
        with self._lock:
            return {r[0] for r in self.db.execute(
                f"SELECT example_id FROM results WHERE suite = ? AND config_hash = ? AND outcome NOT IN "
                f"({', '.join('?' * len(NOT_SCORED))})", (suite, config_hash, *NOT_SCORED))}

    def results(self, suite: str, config_hash: str, example_ids: list[str] | None = None) -> list[Result]:
        with self._lock:
            rows = [Result(**dict(r)) for r in self.db.execute(
                "SELECT * FROM results WHERE suite = ? AND config_hash = ? ORDER BY example_id", (suite, config_hash))]
        if example_ids is not None:
            wanted = set(example_ids)
            rows = [r for r in rows if r.example_id in wanted]
        return rows

    def record_signal(self, suite: str, config_hash: str, signal: dict) -> None:
        """One example's gate signals for `tier-runner calibrate` (evals/gate_signals.py); committed at once."""
        values = [signal[c] for c in SIGNAL_COLUMNS]
        with self._lock:
            self.db.execute(f"INSERT OR REPLACE INTO signals (suite, config_hash, {', '.join(SIGNAL_COLUMNS)}, ts) "
                            f"VALUES ({', '.join('?' * (len(SIGNAL_COLUMNS) + 3))})",
                            (suite, config_hash, *values, time.time()))

    def signals(self, suite: str, config_hash: str) -> list[dict]:
        booleans = ("correct", "gates_ok", "majority_correct", "majority_gates_ok")
        with self._lock:
            rows = [dict(r) for r in self.db.execute(
                f"SELECT {', '.join(SIGNAL_COLUMNS)} FROM signals WHERE suite = ? AND config_hash = ?",
                (suite, config_hash))]
        return [{k: (bool(v) if k in booleans and v is not None else v) for k, v in r.items()} for r in rows]

    def record_decision(self, tier: int, candidate: str, incumbent: str, passed: bool, dry_run: bool, applied: bool,
                        details: dict) -> int:
        with self._lock:
            cur = self.db.execute(
                "INSERT INTO decisions (ts, tier, candidate, incumbent, passed, dry_run, applied, details) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (time.time(), tier, candidate, incumbent, int(passed), int(dry_run), int(applied),
                 json.dumps(details, sort_keys=True, default=str)))
            return cur.lastrowid

    def decisions(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self.db.execute("SELECT * FROM decisions ORDER BY id")]

    def close(self) -> None:
        self.db.close()
