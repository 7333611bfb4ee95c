"""The runners of the active profile, by tier: built from the profile, started and supervised, swapped live.

A swap (a promoted model, an edited placement) starts the new runner first and waits until it is
ready (up to the runner's own `startup_timeout_s`) while the old one keeps serving; only then does
the new one take the tier.
The old runner is retired: it gets no new requests, finishes what it has (drains), then stops, and
the supervisor never restarts it. Swaps are serialised by the caller (`LiveConfig`). A pool
(`replicas:`) is swapped whole: the new pool is ready once `min_ready` of its replicas are.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from hardware.errors import ConfigError
from hardware.profile import Price, Profile, TierPlacement, load_profile
from runners.base import Runner
from runners.pool import build_tier_runner
from runners.supervisor import Supervisor

log = logging.getLogger("tier_runner.tiers")


class TierRunners:
    def __init__(self, profile_ref: str | Path, *, drain_timeout_s: float = 600.0, out_of_process: bool = False):
        """`out_of_process` (serve --workers N): refuse, at start and on reload, a tier that would run on this
        machine inside each worker process (llama.cpp, a vLLM server started here)."""
        self.path, self.profile = load_profile(profile_ref)
        self.out_of_process = out_of_process
        runners = {tier: self._build(tier, placement, self.profile) for tier, placement in self.profile.tiers.items()}
        self.supervisor = Supervisor(runners, str(self.path))
        self.drain_timeout_s = drain_timeout_s
        self._retiring: dict[asyncio.Task, Runner] = {}

    def _build(self, tier: int, placement: TierPlacement, profile: Profile) -> Runner:
        runner = build_tier_runner(tier, placement, str(self.path), profile.devices)
        if self.out_of_process and any(r.memory_needs() for r in runner.supervised()):  # (reads the model's header)
            raise ConfigError(
                f"{self.path}: tiers.{tier} ({runner.kind}: {runner.model_name}) would run on this machine once per "
                "worker of --workers. Serve it from a gateway of its own (tier-runner serve --profile P --port 9003 "
                f"with only that tier) and attach it here: runner: vllm, model: 'tier:{tier}', url: "
                "http://127.0.0.1:9003/v1 (docs/scaling.md); or use --workers 1")
        return runner

    @property
    def name(self) -> str:
        return self.path.stem

    def get(self, tier: int) -> Runner | None:
        return self.supervisor.runner(tier)

    def tiers(self) -> list[int]:
        return self.supervisor.tiers()

    def price(self, tier: int) -> Price:
        runner = self.get(tier)
        return runner.placement.price if runner is not None else Price()

    async def start(self) -> None:
        await self.supervisor.start()

    async def stop(self) -> None:
        """Stop every runner: the supervised ones and those still draining after a swap (their wait is cut short,
        their stop is not)."""
        retiring = dict(self._retiring)
        for task in retiring:
            task.cancel()
        await asyncio.gather(*retiring, return_exceptions=True)
        await asyncio.gather(*(runner.stop() for runner in retiring.values()), return_exceptions=True)
        await self.supervisor.stop()

    async def swap_changed(self) -> list[int]:
        """Re-read the profile and swap in a new runner for each tier whose placement changed.

        Adding or removing a tier needs a restart. A tier whose new runner fails to start or get ready
        keeps its old runner and the reload is rejected with the reason; tiers swapped before it stay
        swapped, and the next reload compares against what is really serving.
        """
        _, profile = load_profile(self.path)
        if set(profile.tiers) != set(self.profile.tiers):
            raise ConfigError(f"{self.path}: tiers were added or removed; restart the server for that")
        changed = [t for t in sorted(profile.tiers) if profile.tiers[t] != self._serving_placement(t)]
        swapped: list[int] = []
        for tier in changed:
            fresh = self._build(tier, profile.tiers[tier], profile)
            old = await self.supervisor.replace(tier, fresh, fresh.startup_timeout_s)
            log.info("tier %s now serves %s (was %s)", tier, fresh.model_name, old.model_name if old else "none")
            swapped.append(tier)
            self._record(profile, tier)
            if old is not None:
                self._retire(old)
        self.profile = self.profile.model_copy(update={"devices": profile.devices, "description": profile.description})
        return swapped

    def _serving_placement(self, tier: int) -> TierPlacement:
        runner = self.get(tier)
        return runner.placement if runner is not None else self.profile.tiers[tier]

    def _record(self, profile: Profile, tier: int) -> None:
        tiers = {**self.profile.tiers, tier: profile.tiers[tier]}
        self.profile = self.profile.model_copy(update={"tiers": tiers})

    def _retire(self, runner: Runner) -> None:
        """Stop a replaced runner once the requests that started on it have finished (or the drain timed out)."""
        async def drain_then_stop() -> None:
            deadline = asyncio.get_running_loop().time() + self.drain_timeout_s
            while runner.in_flight and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            if runner.in_flight:
                log.warning("tier %s: retired runner %s still had %d requests after %.0f s; stopping it", runner.tier,
                            runner.model_name, runner.in_flight, self.drain_timeout_s)
            await runner.stop()

        task = asyncio.create_task(drain_then_stop())
        self._retiring[task] = runner
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
