"""A gateway subprocess serving one tier of a profile: how a candidate (or the incumbent) is evaluated.

The candidate goes through the same code path as production (HTTP, routing, gates, runner), on a temporary
profile that holds only the tier under test, with the candidate's model in it.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from hardware.errors import ConfigError
from hardware.profile import load_profile, profile_path


def single_tier_profile(profile: str | Path, tier: int, model: str | None = None) -> dict:
    """The profile's YAML with only `tier` left, and `model` put on it if given."""
    path = profile_path(profile)
    load_profile(path)  # validated first: errors name the file and the key
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    tiers = {int(k): v for k, v in (data.get("tiers") or {}).items()}
    if tier not in tiers:
        raise ConfigError(f"{path}: has no tiers.{tier}; promotion replaces the model of an existing tier")
    placement = copy.deepcopy(tiers[tier])
    if model is not None:
        placement["model"] = model
    return {**data, "description": f"eval: tier {tier} of {path.name} with {placement['model']}",
            "tiers": {tier: placement}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    """`python -m tiers serve` on a free loopback port; a context manager that stops it with SIGTERM."""

    def __init__(self, profile: dict, routing: Path | None = None, ready_timeout_s: float = 300):
        self.folder = Path(tempfile.mkdtemp(prefix="tier-runner-eval-"))
        self.profile_file = self.folder / "profile.yaml"
        self.profile_file.write_text(yaml.safe_dump(profile, sort_keys=False), encoding="utf-8")
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.routing = routing
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> GatewayProcess:
        cmd = [sys.executable, "-m", "tiers", "serve", "--port", str(self.port), "--profile", str(self.profile_file),
               "--data-dir", str(self.folder / "data"), "--log-level", "warning"]
        if self.routing:
            cmd += ["--routing", str(self.routing)]
        self.log = (self.folder / "gateway.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ},
                                     start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ConfigError(f"the eval gateway exited with {self.proc.returncode}: "
                                  f"{(self.folder / 'gateway.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.__exit__(None, None, None)
        raise ConfigError(f"the eval gateway was not ready after {self.ready_timeout_s:.0f}s; "
                          f"see {self.folder / 'gateway.log'}")

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
