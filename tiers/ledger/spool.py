"""The ledger's spool: append-only JSON-lines files in one folder that one process owns, and a dead-letter file.

Rows go to `current.jsonl`; the writer renames it to `pending-<ns>.jsonl` to load it while new rows go to a
fresh file. Renaming is only safe when no other process appends to or renames the same files, so the folder
is locked (flock on `.lock`) for the life of the process: a second gateway on the same folder is refused.
The lock guards one spool folder, not the data dir, so N processes share a data dir with a spool folder each:
the workers of `serve --workers N` claim `<data_dir>/spool/worker-<i>` (`worker_slots`, `Spool.claim`).

A line that cannot become a ledger row (torn by a crash, corrupt) or that the database refuses is moved to
`dead-letter.jsonl` with the reason, never retried forever and never dropped silently.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hardware.errors import ConfigError

CURRENT = "current.jsonl"
DEAD_LETTER = "dead-letter.jsonl"


def worker_slots(root: Path, workers: int) -> list[Path]:
    """The spool folders `serve --workers N` workers claim from: twice N, because uvicorn starts a worker's
    replacement before it stops the old one (SIGHUP) and may add workers (SIGTTIN)."""
    return [Path(root) / f"worker-{i}" for i in range(2 * workers)]


class Spool:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._lock()
        self._append_lock = threading.Lock()
        self._set_aside()  # what an earlier process left in current.jsonl (maybe a torn last line) is pending now
        self._file = (self.folder / CURRENT).open("a", encoding="utf-8")
        self.dead_letter_path = self.folder / DEAD_LETTER
        self.dead_letters = _count_lines(self.dead_letter_path)

    @classmethod
    def claim(cls, folders: list[Path]) -> Spool:
        """The first of `folders` no other process holds: a worker of `serve --workers N` takes one slot's spool,
        and the worker that replaces a killed one takes the freed slot and loads what it left."""
        for folder in folders:
            try:
                return cls(folder)
            except ConfigError:
                continue
        raise ConfigError(f"every ledger spool of {Path(folders[0]).parent} is in use ({len(folders)} worker slots): "
                          "more workers run on this --data-dir than it has slots for; stop some, or give this gateway "
                          "its own --data-dir")

    def _lock(self):
        lock_file = (self.folder / ".lock").open("a+", encoding="utf-8")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise ConfigError(f"the ledger spool {self.folder} is in use by another process (pid {holder}); two "
                              "gateways on one spool would load and delete each other's rows. Give this one its own "
                              "--data-dir, or stop the other first") from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        return lock_file

    def append(self, lines: str) -> None:
        with self._append_lock:
            self._file.write(lines)
            self._file.flush()  # into the page cache: survives the process, not the machine

    def rotate(self) -> None:
        """Move the current file aside (if it has rows) so it can be loaded while new rows go to a fresh one."""
        with self._append_lock:
            if self._file.tell() == 0:
                return
            self._file.close()
            self._set_aside()
            self._file = (self.folder / CURRENT).open("a", encoding="utf-8")

    def _set_aside(self) -> None:
        current = self.folder / CURRENT
        if current.exists() and current.stat().st_size > 0:
            current.rename(self.folder / f"pending-{time.time_ns()}.jsonl")

    def pending(self) -> list[Path]:
        return sorted(self.folder.glob("pending-*.jsonl"))

    @staticmethod
    def lines(path: Path) -> Iterator[tuple[str, bool]]:
        """Each line of a pending file and whether it is whole; a last line with no newline was torn mid-write."""
        with path.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                yield line.rstrip("\n"), line.endswith("\n")

    def dead_letter(self, source: Path, line: str, reason: str) -> None:
        entry = {"ts": time.time(), "source": source.name, "reason": reason, "line": line}
        with self._append_lock, self.dead_letter_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self.dead_letters += 1

    def close(self) -> None:
        with self._append_lock:
            self._file.close()
        fcntl.flock(self._lock_file, fcntl.LOCK_UN)
        self._lock_file.close()


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)
