"""Live reloads with a fake runner registered like a real one: serialised swaps, a watcher that survives
anything a reload throws, partial multi-tier swaps, and retired runners that drain before they stop."""

from __future__ import annotations

import asyncio
import importlib.abc
import sys
import time
from contextlib import contextmanager

import pytest
from pydantic import BaseModel, ConfigDict

from runners.answer import Answer, Choice
from runners.base import Runner, register_runner
from runners.request import Request
from tiers.cache.semantic import SemanticCache
from tiers.cache.store import Limits
from tiers.live_config import LiveConfig, ReloadRejected
from tiers.tier_runners import TierRunners

ROUTING = "features:\n  f: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0}\n"


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start_s: float = 0.0
    start_error: bool = False


@register_runner
class FakeTierRunner(Runner):
    kind = "fake-tier"
    Options = FakeOptions
    starting_now = 0
    most_starting = 0

    async def start(self) -> None:
        cls = type(self)
        cls.starting_now += 1
        cls.most_starting = max(cls.most_starting, cls.starting_now)
        try:
            self.lifecycle.to("starting")
            await asyncio.sleep(self.options.start_s)
            if self.options.start_error:
                raise RuntimeError("the backend crashed while loading")
            self.lifecycle.to("ready")
        finally:
            cls.starting_now -= 1

    async def stop(self) -> None:
        self.lifecycle.to("stopped")

    async def answer(self, request) -> Answer:
        await self.release.wait()
        return Answer(model=self.model_name, choices=[Choice(text="ok")])

    def answer_stream(self, request):
        raise NotImplementedError


def placement(model: str, **options) -> str:
    extra = "".join(f", {k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in options.items())
    return f"{{runner: fake-tier, model: {model}{extra}}}"


def write_profile(path, **tiers) -> None:
    path.write_text("tiers:\n" + "".join(f"  {tier[1:]}: {spec}\n" for tier, spec in tiers.items()))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "routing.yaml").write_text(ROUTING)
    write_profile(tmp_path / "profile.yaml", t3=placement("m1"))
    FakeTierRunner.starting_now = FakeTierRunner.most_starting = 0
    return tmp_path


async def live(files, interval_s: float = 0.0) -> LiveConfig:
    config = LiveConfig(files / "routing.yaml", TierRunners(files / "profile.yaml"), interval_s)
    await config.runners.start()
    config.start_watching()
    return config


async def test_concurrent_reloads_are_serialised_and_swap_a_tier_once(files):
    config = await live(files)
    write_profile(files / "profile.yaml", t3=placement("m2", start_s=0.3))
    first, second = await asyncio.gather(config.reload_profile(), config.reload_profile())
    assert sorted([first, second]) == [[], [3]]  # the second saw the tier already serving m2
    assert FakeTierRunner.most_starting == 1 and config.runners.get(3).model_name == "m2"
    await config.runners.stop()


async def test_the_watcher_survives_a_reload_that_raises_and_keeps_watching(files):
    config = await live(files, interval_s=0.05)
    old = config.runners.get(3)
    write_profile(files / "profile.yaml", t3=placement("m2", start_error=True))
    await asyncio.sleep(0.4)
    assert config.runners.get(3) is old and old.serving()  # rejected: the old runner keeps serving
    (files / "routing.yaml").write_text(ROUTING + "  g: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0}\n")
    deadline = time.monotonic() + 5
    while "g" not in config.routing.features:
        assert time.monotonic() < deadline, "the watcher stopped after a reload raised"
        await asyncio.sleep(0.05)
    await config.stop_watching()
    await config.runners.stop()


async def test_a_partial_multi_tier_swap_keeps_what_was_swapped_and_its_price(files):
    write_profile(files / "profile.yaml", t2=placement("a1"), t3=placement("b1"))
    config = await live(files)
    priced = "{runner: fake-tier, model: a2, price: {input_per_m: 5}}"
    write_profile(files / "profile.yaml", t2=priced, t3=placement("b2", start_error=True))
    with pytest.raises(ReloadRejected, match="tier 3: the new runner failed to start: RuntimeError"):
        await config.reload_profile()
    tier2 = config.runners.get(2)
    assert tier2.model_name == "a2" and config.runners.price(2).input_per_m == 5
    assert config.runners.get(3).model_name == "b1"
    write_profile(files / "profile.yaml", t2=priced, t3=placement("b2"))
    assert await config.reload_profile() == [3]  # tier 2 is not swapped a second time
    assert config.runners.get(2) is tier2
    await config.runners.stop()


async def test_a_retired_runner_drains_its_requests_then_stops(files):
    config = await live(files)
    old = config.runners.get(3)
    old.release = asyncio.Event()
    answering = asyncio.create_task(old.complete(Request()))
    await asyncio.sleep(0.05)
    write_profile(files / "profile.yaml", t3=placement("m2"))
    assert await config.reload_profile() == [3]
    await asyncio.sleep(0.3)
    assert old.lifecycle.state == "ready" and old.in_flight == 1  # still answering: not stopped under it
    old.release.set()
    assert (await answering).first.text == "ok"
    deadline = time.monotonic() + 2
    while old.lifecycle.state != "stopped":
        assert time.monotonic() < deadline, "the drained runner was not stopped"
        await asyncio.sleep(0.05)
    await config.runners.stop()


@contextmanager
def without_module(name: str):
    """`name` cannot be imported meanwhile, as in an environment without it (the finder of tests/test_extras.py)."""
    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.split(".")[0] == name:
                raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)

    saved = {k: sys.modules.pop(k) for k in list(sys.modules) if k == name or k.startswith(name + ".")}
    finder = Missing()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        sys.modules.update(saved)


async def test_a_routing_table_the_server_cannot_serve_is_rejected_on_reload_and_the_old_one_serves(files):
    cache = SemanticCache(limits=Limits(max_entries=100_000), ann_min=10)  # HNSW from 10 entries on
    config = LiveConfig(files / "routing.yaml", TierRunners(files / "profile.yaml"), 0.0, check=cache.check_table)
    big = ROUTING + "  faq: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0, cache: {max_entries: 50}}\n"
    (files / "routing.yaml").write_text(big)
    with without_module("faiss"), pytest.raises(ReloadRejected) as rejected:
        await config.reload_routing()
    assert "feature 'faq'" in rejected.value.message and "value-tier-runner[faiss]" in rejected.value.message
    assert sorted(config.routing.features) == ["f"]
    await config.reload_routing()  # with faiss there, the same file is taken
    assert sorted(config.routing.features) == ["f", "faq"]


async def test_shutdown_while_a_retired_runner_drains_still_stops_it(files):
    """The server stopping cuts the drain short, not the stop: a replaced vLLM server must not outlive the gateway."""
    config = await live(files)
    old = config.runners.get(3)
    old.release = asyncio.Event()
    answering = asyncio.create_task(old.complete(Request()))
    await asyncio.sleep(0.05)
    write_profile(files / "profile.yaml", t3=placement("m2"))
    assert await config.reload_profile() == [3]
    await asyncio.sleep(0.1)
    assert old.lifecycle.state == "ready"  # draining its one request
    await config.runners.stop()
    assert old.lifecycle.state == "stopped" and config.runners.get(3).lifecycle.state == "stopped"
    answering.cancel()
    await asyncio.gather(answering, return_exceptions=True)


async def test_with_workers_a_reload_to_a_tier_that_runs_in_process_is_rejected(files):
    """--workers N: a profile edited to put llama.cpp on a tier would load the model once per worker."""
    config = LiveConfig(files / "routing.yaml", TierRunners(files / "profile.yaml", out_of_process=True), 0.0)
    await config.runners.start()
    old = config.runners.get(3)
    (files / "profile.yaml").write_text("tiers:\n  3: {runner: llamacpp, model: smollm2-135m-instruct-q4_1}\n")
    with pytest.raises(ReloadRejected, match=r"tiers\.3 \(llamacpp: smollm2-135m-instruct-q4_1\) would run on this "
                                             r"machine once per worker"):
        await config.reload_profile()
    assert config.runners.get(3) is old and old.serving()
    await config.runners.stop()
