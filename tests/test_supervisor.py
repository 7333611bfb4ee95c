"""The supervisor's own logic with a fake runner: start together, fatal config errors, restart with backoff.

The real thing (vLLM killed mid-request, restarted, no orphans) is in test_vllm_e2e.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from hardware.errors import ConfigError
from hardware.profile import TierPlacement
from runners.base import Runner
from runners.supervisor import Supervisor


class FakeRunner(Runner):
    kind = "fake"
    Options = None

    def __init__(self, tier: int, fail_start: Exception | None = None, *, optional: bool = False,
                 unconfigured: bool = False, **restart):
        placement = TierPlacement(runner="fake", model=f"m{tier}", optional=optional,
                                  restart={"backoff_s": 0.1, "backoff_max_s": 0.4, "check_interval_s": 0.02, **restart})
        super().__init__(tier, placement, None)
        self.fail_start, self.unconfigured, self.starts, self.stops = fail_start, unconfigured, [], 0

    async def start(self) -> None:
        self.starts.append(time.monotonic())
        if self.fail_start:
            raise self.fail_start
        if self.unconfigured:
            self._set_state("not_configured", "environment variable FAKE_KEY is not set")
            return
        self._set_state("ready")

    async def stop(self) -> None:
        self.stops += 1
        self._set_state("stopped")

    async def complete(self, request):
        raise NotImplementedError

    def stream(self, request):
        raise NotImplementedError


def run(coro):
    return asyncio.run(coro)


def test_config_error_at_start_stops_the_others_and_is_raised():
    good, bad = FakeRunner(3), FakeRunner(2, ConfigError("tiers.2.model: missing"))

    async def go():
        with pytest.raises(ConfigError, match="missing"):
            await Supervisor({3: good, 2: bad}).start()

    run(go())
    assert good.stops == 1 and good.state == "stopped"


def test_failed_runner_is_restarted_with_doubling_backoff():
    runner = FakeRunner(2)

    async def go():
        supervisor = Supervisor({2: runner})
        await supervisor.start()
        for _ in range(3):
            runner._set_state("failed", "crashed")
            before = len(runner.starts)
            deadline = time.monotonic() + 5
            while len(runner.starts) == before and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            while runner.state != "ready" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await supervisor.stop()
        return supervisor.restarts(2)

    assert run(go()) == 3
    gaps = [b - a for a, b in zip(runner.starts, runner.starts[1:])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4  # 0.1, 0.2, 0.4 s (the max)
    assert runner.state == "stopped"


def test_other_start_failures_leave_the_tier_failed_and_retried():
    runner = FakeRunner(2, RuntimeError("out of memory"))

    async def go():
        supervisor = Supervisor({2: runner})
        await supervisor.start()
        status = runner.status()
        await asyncio.sleep(0.5)
        await supervisor.stop()
        return status

    status = run(go())
    assert status.state == "failed" and "out of memory" in status.detail
    assert len(runner.starts) >= 2


@pytest.mark.parametrize(("optional", "ready"), [(True, True), (False, False)])
def test_a_tier_that_is_not_configured_is_not_retried_and_holds_ready_back_unless_optional(optional, ready):
    local, hosted = FakeRunner(3), FakeRunner(1, optional=optional, unconfigured=True)

    async def go():
        supervisor = Supervisor({3: local, 1: hosted})
        await supervisor.start()
        await asyncio.sleep(0.3)  # many check intervals and backoffs: a failed tier would have been restarted
        result = supervisor.ready()
        hosted._set_state("failed", "crashed")  # optional covers only the lack of configuration
        failed = supervisor.ready()
        await supervisor.stop()
        return result, failed

    assert run(go()) == (ready, False)
    assert len(hosted.starts) == 1
