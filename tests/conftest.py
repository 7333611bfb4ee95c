"""Shared fixtures: a real server subprocess on 127.0.0.1 with the real SmolLM2 model."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from runners.procs import group_alive

REPO = Path(__file__).resolve().parent.parent


# A developer's own provider settings must not reach a server under test: a test that needs one passes it.
PROVIDER_ENV = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildProcess:
    """A server under test as a child process logging to a file: `wait_ready` polls one URL until it answers
    200, `stop` is SIGTERM like a user's Ctrl-C (SIGKILL after 30 s).

    With `own_group`, the child leads a process group of its own and `stop` ends the whole group, waiting
    until none of it is left (a `make` and the server it runs, for example). `env` adds to this process's
    environment, less PROVIDER_ENV; a None value removes a variable.
    """

    def __init__(self, cmd: list[str], *, port: int, log_path: Path, ready_path: str = "/ready",
                 ready_headers: dict[str, str] | None = None, env: dict[str, str | None] | None = None,
                 cwd: Path = REPO, own_group: bool = False):
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.ready_url, self.ready_headers = f"{self.base_url}{ready_path}", ready_headers or {}
        self.own_group = own_group
        environment = {k: v for k, v in {**os.environ, **(env or {})}.items()
                       if v is not None and (k not in PROVIDER_ENV or k in (env or {}))}
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, env=environment,
                                     start_new_session=own_group)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-5000:]}")
            try:
                if httpx.get(self.ready_url, headers=self.ready_headers, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log_path.read_text()[-5000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait()
        if self.own_group:
            deadline = time.monotonic() + 30
            while group_alive(self.proc.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if group_alive(self.proc.pid):
                self._signal(signal.SIGKILL)
        self.log.close()
        return self.proc.returncode

    def _signal(self, sig: int) -> None:
        try:
            if self.own_group:
                os.killpg(self.proc.pid, sig)
            else:
                self.proc.send_signal(sig)
        except ProcessLookupError:
            pass

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()


class ServerProcess(ChildProcess):
    """`python -m tiers serve` on a free port, with its own data dir and, unless given, the cpu-tier3 profile."""

    def __init__(self, *args: str, env: dict[str, str | None] | None = None, log_path: Path):
        port = free_port()
        self.data_dir = log_path.parent / f"data-{port}"
        if "--data-dir" not in args:
            args = ("--data-dir", str(self.data_dir), *args)
        if "--profile" not in args:
            args = ("--profile", "cpu-tier3", *args)
        super().__init__([sys.executable, "-m", "tiers", "serve", "--port", str(port), *args], port=port,
                         log_path=log_path, env=env)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    """The default configuration: cpu-tier3 profile (Tier 3 only), shipped routing table, small body limit."""
    proc = ServerProcess("--max-body-bytes", "65536", log_path=tmp_path_factory.mktemp("server") / "server.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed-on-loopback", max_retries=0)


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL for the session; tests take a fresh database each via `fresh_postgres_url`."""
    from tests.postgres import PostgresServer

    server = PostgresServer(free_port()).start()
    try:
        yield server
    finally:
        server.stop()


def new_database(postgres) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return postgres.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def fresh_postgres_url(postgres) -> str:
    return new_database(postgres)


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path) -> str:
    """Each ledger test runs on both backends: SQLite (the default) and a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("fresh_postgres_url")


class RedisServer:
    """A real redis-server from Debian's packages on 127.0.0.1 (no persistence); `stop` and `start` again keep
    its port, so a test can take Redis away from a running gateway and bring it back."""

    def __init__(self, folder: Path):
        import shutil

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install -y redis-server (.ci/run does)")
        self.folder, self.port = folder, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        import redis

        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.folder)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """One real redis-server for the session."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory) -> RedisServer:
    """A redis-server of the test module's own, which its tests may stop and start again (an outage)."""
    server = RedisServer(tmp_path_factory.mktemp("module-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strong(tmp_path_factory) -> ServerProcess:
    """The stand-in frontier API for a hosted Tier 1: Qwen2.5-Coder-0.5B behind a gateway of its own, one per test
    module (a module's test may stop it)."""
    root = tmp_path_factory.mktemp("strong")
    profile = root / "qwen.yaml"
    profile.write_text("devices: {cpu: {kind: cpu}}\ntiers:\n"
                       "  3: {runner: llamacpp, device: cpu, model: qwen2.5-coder-0.5b-instruct-q4_k_m, max_batch: 2}\n")
    proc = ServerProcess("--profile", str(profile), log_path=root / "strong.log")
    try:
        proc.wait_ready(timeout=300)
        yield proc
    finally:
        proc.stop()


TOOL_PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: qwen2.5-coder-0.5b-instruct-q4_k_m, max_batch: 4}
  2: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 4}
"""
TOOL_ROUTING = """features:
  weather-agent: {tier: 3, value: retention, owner: support, failure_cost_usd: 2}
"""


@pytest.fixture(scope="session")
def tool_gateway(tmp_path_factory) -> ServerProcess:
    """Both shipped GGUF models on llama.cpp for the tool tests: Qwen2.5-Coder-0.5B (its template knows tools) on
    tier:3, SmolLM2 (its template does not) on tier:2; feature weather-agent routes to Qwen."""
    root = tmp_path_factory.mktemp("tools")
    (root / "profile.yaml").write_text(TOOL_PROFILE)
    (root / "routing.yaml").write_text(TOOL_ROUTING)
    proc = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                         log_path=root / "gateway.log")
    try:
        proc.wait_ready(timeout=300)
        yield proc
    finally:
        proc.stop()
