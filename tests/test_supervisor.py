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
            self.lifecycle.to("not_configured", "environment variable FAKE_KEY is not set")
            return
        self.lifecycle.to("ready")

    async def stop(self) -> None:
        self.stops += 1
        self.lifecycle.to("stopped")

    async def answer(self, request):
        raise NotImplementedError

    def answer_stream(self, request):
        raise NotImplementedError


def run(coro):
    return asyncio.run(coro)


def test_config_error_at_start_stops_the_others_and_is_raised():
    good, bad = FakeRunner(3), FakeRunner(2, ConfigError("tiers.2.model: missing"))

    async def go():
        with pytest.raises(ConfigError, match="missing"):
            await Supervisor({3: good, 2: bad}).start()

    run(go())
    assert good.stops == 1 and good.lifecycle.state == "stopped"


def test_failed_runner_is_restarted_with_doubling_backoff():
    runner = FakeRunner(2)

    async def go():
        supervisor = Supervisor({2: runner})
        await supervisor.start()
        for _ in range(3):
            runner.mark_failed("crashed")
            before = len(runner.starts)
            deadline = time.monotonic() + 5
            while len(runner.starts) == before and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            while runner.lifecycle.state != "ready" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await supervisor.stop()
        return supervisor.restarts(2)

    assert run(go()) == 3
    gaps = [b - a for a, b in zip(runner.starts, runner.starts[1:])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2 and gaps[2] >= 0.4  # 0.1, 0.2, 0.4 s (the max)
    assert runner.lifecycle.state == "stopped"


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
        hosted.mark_failed("crashed")  # optional covers only the lack of configuration
        failed = supervisor.ready()
        await supervisor.stop()
        return result, failed

    assert run(go()) == (ready, False)
    assert len(hosted.starts) == 1


class SlowRunner(FakeRunner):
    """Ready `ready_after` seconds after start (like vLLM, which starts in the background); never when None."""

    def __init__(self, tier: int, ready_after: float | None):
        super().__init__(tier)
        self.ready_after = ready_after

    async def start(self) -> None:
        self.starts.append(time.monotonic())
        self.lifecycle.to("starting")
        if self.ready_after is not None:
            def ready() -> None:
                if self.lifecycle.state == "starting":
                    self.lifecycle.to("ready")

            asyncio.get_running_loop().call_later(self.ready_after, ready)


def test_replace_waits_until_the_new_runner_is_ready():
    old, new = FakeRunner(2), SlowRunner(2, ready_after=0.3)

    async def go():
        supervisor = Supervisor({2: old})
        await supervisor.start()
        started = time.monotonic()
        replaced = await supervisor.replace(2, new, ready_timeout_s=5)
        waited = time.monotonic() - started
        current = supervisor.runner(2)
        await supervisor.stop()
        return replaced, current, waited

    replaced, current, waited = run(go())
    assert replaced is old and current is new and waited >= 0.3
    assert old.stops == 0  # the caller drains and stops the old runner, not the supervisor


def test_replace_refuses_a_runner_that_never_gets_ready_and_keeps_the_old_one():
    old, new = FakeRunner(2), SlowRunner(2, ready_after=None)

    async def go():
        supervisor = Supervisor({2: old})
        await supervisor.start()
        with pytest.raises(ConfigError, match=r"did not become ready \(still starting after 0 s\)"):
            await supervisor.replace(2, new, ready_timeout_s=0.3)
        current = supervisor.runner(2)
        await supervisor.stop()
        return current

    assert run(go()) is old and new.stops == 1


def test_a_swap_cancelled_by_shutdown_stops_the_new_runner():
    """The server shutting down mid-swap cancels the reload: the half-started runner (a vLLM process) is stopped,
    not left running with nobody to stop it."""
    old, new = FakeRunner(2), SlowRunner(2, ready_after=None)

    async def go():
        supervisor = Supervisor({2: old})
        await supervisor.start()
        swap = asyncio.create_task(supervisor.replace(2, new, ready_timeout_s=60))
        await asyncio.sleep(0.3)
        swap.cancel()
        with pytest.raises(asyncio.CancelledError):
            await swap
        current = supervisor.runner(2)
        await supervisor.stop()
        return current

    assert run(go()) is old and new.stops == 1 and new.lifecycle.state == "stopped"


def test_a_replaced_runner_is_never_restarted():
    old, new = FakeRunner(2, backoff_s=0.2), FakeRunner(2)

    async def go():
        supervisor = Supervisor({2: old})
        await supervisor.start()
        old.mark_failed("crashed")
        await asyncio.sleep(0.05)  # the supervisor has seen it and scheduled a restart after its backoff
        await supervisor.replace(2, new, ready_timeout_s=5)
        await asyncio.sleep(0.6)  # past the backoff: a restart of the old runner would have happened by now
        await supervisor.stop()

    run(go())
    assert len(old.starts) == 1 and len(new.starts) == 1


def test_a_new_runner_whose_start_raises_is_stopped_and_the_tier_keeps_the_old_one():
    """A start error other than a rejected config (the backend crashed while loading) must not leak the new
    runner: it is stopped, the reload is refused with the reason, and the old runner keeps the tier."""
    old, new = FakeRunner(2), FakeRunner(2, RuntimeError("the backend crashed while loading"))

    async def go():
        supervisor = Supervisor({2: old})
        await supervisor.start()
        with pytest.raises(ConfigError, match="tier 2: the new runner failed to start: RuntimeError: the backend"):
            await supervisor.replace(2, new, ready_timeout_s=5)
        current = supervisor.runner(2)
        await supervisor.stop()
        return current

    assert run(go()) is old and new.stops == 1 and old.stops == 1  # old: stopped by supervisor.stop() only
