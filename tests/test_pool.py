"""A tier's pool with fake replicas: balancing by weighted outstanding requests, retry before the first byte on
another replica, ejection and re-admission, min_ready, and the supervisor restarting one replica alone.

The real thing (two real OpenAI-protocol servers, one SIGKILLed under load) is in test_pool_e2e.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from hardware.profile import TierPlacement
from runners.answer import Answer, Choice, ChoiceDelta, Delta
from runners.base import Runner
from runners.errors import InvalidRequest, Overloaded, RunnerFailed, TierUnavailable
from runners.pool import PoolRunner
from runners.request import Message, Request, TextPart
from runners.supervisor import Supervisor

REQUEST = Request(messages=[Message(role="user", content=[TextPart(text="hi")])])
RESTART = {"backoff_s": 0.05, "backoff_max_s": 0.1, "check_interval_s": 0.02}


class Member(Runner):
    """A replica whose answers the test controls: `fail` raises before the first byte, `hold` keeps it busy."""

    kind = "fake"
    Options = None

    def __init__(self, name: str):
        super().__init__(2, TierPlacement(runner="fake", model="m", restart=RESTART), None)
        self.replica = name
        self.fail: Exception | None = None
        self.hold: asyncio.Event | None = None
        self.calls = 0
        self.starts = 0
        self.break_mid_stream = False

    async def start(self) -> None:
        self.starts += 1
        self.lifecycle.to("ready")

    async def stop(self) -> None:
        self.lifecycle.to("stopped")

    async def answer(self, request: Request) -> Answer:
        self.calls += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        return Answer(model="m", choices=[Choice(text=f"from {self.replica}")])

    async def answer_stream(self, request: Request):
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        yield Delta(choices=[ChoiceDelta(text=f"from {self.replica}")])
        if self.break_mid_stream:
            raise RunnerFailed("broke mid-stream")
        yield Delta(choices=[ChoiceDelta(finish_reason="stop")])


def pool(*weights: float, min_ready: int = 1, after_failures: int = 2, cooldown_s: float = 0.3
         ) -> tuple[PoolRunner, list[Member]]:
    members = [Member(chr(ord("a") + i)) for i in range(len(weights))]
    placement = TierPlacement(runner="fake", model="m", restart=RESTART, min_ready=min_ready,
                              replicas=[{"name": m.replica} for m in members],
                              ejection={"after_failures": after_failures, "cooldown_s": cooldown_s})
    return PoolRunner(2, placement, list(zip(members, weights))), members


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_go_to_the_replica_with_the_fewest_in_flight_for_its_weight():
    async def go(weights):
        runner, members = pool(*weights)
        await runner.start()
        gate = asyncio.Event()
        for m in members:
            m.hold = gate
        tasks = [asyncio.create_task(runner.complete(REQUEST)) for _ in range(12)]
        await asyncio.sleep(0.05)
        busy = [m.in_flight for m in members]
        gate.set()
        answers = await asyncio.gather(*tasks)
        return busy, [a.replica for a in answers]

    busy, replicas = run(go((1, 1)))
    assert busy == [6, 6] and sorted(set(replicas)) == ["a", "b"]
    busy, _ = run(go((1, 2)))
    assert busy == [4, 8]


def test_sequential_requests_are_shared_by_weight():
    async def go():
        runner, members = pool(1, 3)
        await runner.start()
        return [(await runner.complete(REQUEST)).replica for _ in range(40)]

    served = run(go())
    assert (served.count("a"), served.count("b")) == (10, 30)


def test_a_request_that_fails_before_its_first_byte_is_answered_by_another_replica():
    async def go():
        runner, (a, b) = pool(1, 1, after_failures=2)
        await runner.start()
        a.fail = TierUnavailable("tier 2 (m at a) is unreachable (ConnectError)")
        answers = [await runner.complete(REQUEST) for _ in range(6)]
        return answers, a, runner

    answers, a, runner = run(go())
    assert {x.replica for x in answers} == {"b"} and answers[0].first.text == "from b"
    assert a.calls == 2  # two failures eject it: the other four never tried it
    (ra, rb) = runner.replicas()
    assert ra["state"] == "ejected" and "circuit open after 2" in ra["detail"] and ra["ejections"] == 1
    assert rb["state"] == "ready" and runner.status().state == "ready"


def test_an_ejected_replica_is_probed_after_its_cooldown_and_readmitted_when_it_answers():
    async def go():
        runner, (a, b) = pool(1, 1, after_failures=1, cooldown_s=0.2)
        await runner.start()
        a.fail = RunnerFailed("tier 2 answered HTTP 500")
        await runner.complete(REQUEST)
        assert runner.replicas()[0]["state"] == "ejected"
        a.fail = None
        await asyncio.sleep(0.25)
        served = [(await runner.complete(REQUEST)).replica for _ in range(4)]
        return served, runner.replicas()[0]["state"]

    served, state = run(go())
    assert "a" in served and state == "ready"


def test_counting_tokens_on_a_half_open_replica_settles_its_probe():
    """count_tokens picks a replica like an answer does; a half-open one's probe must not stay claimed for ever."""
    async def go():
        runner, (a, b) = pool(1, 1, after_failures=1, cooldown_s=0.2)
        await runner.start()
        a.fail = RunnerFailed("tier 2 answered HTTP 500")
        await runner.complete(REQUEST)
        a.fail = None
        await asyncio.sleep(0.25)  # past the cooldown: a is half-open, and the next pick probes it
        b.lifecycle.to("stopped")  # so that the count goes to a
        assert await runner.count_tokens(REQUEST) is None
        b.lifecycle.to("ready")
        return runner.replicas()[0]["state"], [(await runner.complete(REQUEST)).replica for _ in range(4)]

    state, served = run(go())
    assert state == "ready" and "a" in served


def test_only_answers_count_as_a_replicas_requests():
    """/ready's and the metrics' `requests` per replica sit beside the ledger's rows: a token count is not one."""
    async def go():
        runner, _ = pool(1, 1)
        await runner.start()
        await runner.complete(REQUEST)
        async for _ in runner.stream(REQUEST):
            pass
        await runner.count_tokens(REQUEST)
        return [r["requests"] for r in runner.replicas()]

    assert sum(run(go())) == 2


def test_a_replica_that_gets_ready_again_is_readmitted_at_once():
    async def go():
        runner, (a, b) = pool(1, 1, after_failures=1, cooldown_s=60)
        await runner.start()
        a.fail = TierUnavailable("unreachable")
        await runner.complete(REQUEST)
        a.fail = None
        a.mark_failed("failed 3 health checks in a row")  # what its own check does next
        assert runner.replicas()[0]["state"] == "failed"
        await a.stop()
        await a.start()  # the supervisor's restart
        return [(await runner.complete(REQUEST)).replica for _ in range(4)]

    assert run(go()).count("a") == 2


def test_a_bad_request_and_an_overloaded_replica():
    async def go():
        runner, (a, b) = pool(1, 1, after_failures=1)
        await runner.start()
        a.fail = InvalidRequest("max_tokens: too many")
        with pytest.raises(InvalidRequest):
            await runner.complete(REQUEST)  # the request is at fault: not retried elsewhere
        assert (a.calls, b.calls) == (1, 0)
        a.fail = Overloaded("queue full")
        answers = [await runner.complete(REQUEST) for _ in range(2)]
        return answers, runner.replicas()[0]

    answers, ra = run(go())
    assert {x.replica for x in answers} == {"b"} and ra["state"] == "ready"  # busy is not broken: never ejected


def test_when_every_replica_fails_the_error_names_each():
    async def go():
        runner, (a, b) = pool(1, 1)
        await runner.start()
        a.fail, b.fail = TierUnavailable("a is unreachable"), TierUnavailable("b is unreachable")
        with pytest.raises(TierUnavailable) as unavailable:
            await runner.complete(REQUEST)
        b.fail = RunnerFailed("b answered HTTP 500")
        a.fail = TierUnavailable("a is unreachable")
        for m in (a, b):
            m.mark_failed("x")
            await m.stop()
            await m.start()
        with pytest.raises(RunnerFailed) as failed:
            await runner.complete(REQUEST)
        return unavailable.value.message, failed.value.message

    unavailable, failed = run(go())
    assert "every replica failed before answering (a: a is unreachable; b: b is unreachable)" in unavailable
    assert "b: b answered HTTP 500" in failed


def test_streams_retry_before_the_first_delta_but_not_after():
    async def go():
        runner, (a, b) = pool(1, 1, after_failures=5)
        await runner.start()
        a.fail = TierUnavailable("unreachable")
        first = [d async for d in runner.stream(REQUEST)]
        a.fail, b.break_mid_stream = None, True
        a.break_mid_stream = True
        got = []
        with pytest.raises(RunnerFailed):
            async for d in runner.stream(REQUEST):
                got.append(d)
        return first, got, a.calls + b.calls

    first, got, calls = run(go())
    assert first[0].replica == "b" and first[0].choices[0].text == "from b"
    assert len(got) == 1 and calls == 3  # the broken stream was not retried: its first delta had gone out


def test_min_ready_holds_ready_but_the_replicas_left_still_serve():
    async def go():
        runner, (a, b) = pool(1, 1, min_ready=2)
        await runner.start()
        ready = runner.status().state
        a.mark_failed("vLLM exited with code -9")
        status = runner.status()
        answer = await runner.complete(REQUEST)
        return ready, status, runner.serving(), answer.replica

    ready, status, serving, replica = run(go())
    assert ready == "ready" and status.state == "failed" and serving and replica == "b"
    assert "1 of 2 replicas serving, fewer than min_ready=2: a: failed (vLLM exited with code -9)" in status.detail


def test_the_supervisor_restarts_a_failed_replica_alone():
    async def go():
        runner, (a, b) = pool(1, 1)
        supervisor = Supervisor({2: runner})
        await supervisor.start()
        a.mark_failed("crashed")
        deadline = time.monotonic() + 5
        while a.starts < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        result = (a.starts, b.starts, supervisor.restarts(2, "a"), supervisor.restarts(2, "b"), supervisor.ready())
        await supervisor.stop()
        return result

    assert run(go()) == (2, 1, 1, 0, True)


def test_an_optional_pool_whose_replicas_lack_their_keys_does_not_hold_ready():
    class Unkeyed(Member):
        async def start(self) -> None:
            self.lifecycle.to("not_configured", "environment variable OPENAI_API_KEY is not set")

    async def go():
        members = [Unkeyed("a"), Unkeyed("b")]
        placement = TierPlacement(runner="fake", model="m", restart=RESTART, optional=True,
                                  replicas=[{"name": m.replica} for m in members])
        supervisor = Supervisor({1: PoolRunner(1, placement, [(m, 1.0) for m in members])})
        await supervisor.start()
        result = supervisor.ready(), supervisor.runner(1).status().state
        await supervisor.stop()
        return result

    assert run(go()) == (True, "not_configured")
