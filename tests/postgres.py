"""A real PostgreSQL server from Debian's packages, started on 127.0.0.1 for the tests."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run `apt-get install -y postgresql` (.ci/run does)")
    return Path(found[-1]).parent


class PostgresServer:
    """Lives in its own folder under /tmp: the postgres user must be able to reach it when tests run as root."""

    def __init__(self, port: int):
        self.root, self.port = Path(tempfile.mkdtemp(prefix="tier-runner-pg-")), port
        self.data = self.root / "pgdata"
        self.bin = postgres_bin()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        self.proc: subprocess.Popen | None = None

    def _as_postgres(self, args: list[str]) -> list[str]:
        """PostgreSQL refuses to run as root; tests often do."""
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        return args

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                                          "--auth=trust", "--no-sync"]), check=True, capture_output=True)
        return self.launch()

    def launch(self) -> PostgresServer:
        """Start (or restart) the server on the existing cluster and wait until it accepts connections."""
        log = (self.root / "postgres.log").open("a")
        self.proc = subprocess.Popen(
            self._as_postgres([str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p",
                               str(self.port), "-k", str(self.root), "-c", "fsync=off"]),
            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not start: {(self.root / 'postgres.log').read_text()}")

    def halt(self) -> None:
        """Fast shutdown: open sessions (a ledger's pool) are disconnected, as in a real outage."""
        if self.proc and self.proc.poll() is None:
            subprocess.run(self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                              "stop"]), capture_output=True, timeout=60)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.root, ignore_errors=True)
