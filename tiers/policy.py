"""Per-feature policy: pick a tier without silent downgrades, run the gates, retry or escalate.

A Tier 2 (or gated Tier 3) answer that fails its gate is retried on the same tier `retries` times,
then escalated to `escalate_to` (Tier 1 by default), whose answer is returned. The first attempt is
asked exactly as the client asked; an escalation also asks for a json_schema gate's schema as
structured output, so the stronger tier is held to the format the weaker one missed. A feature whose tier is
down is served by another tier only if its `fallback` list names it, and the response says so.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from runners.errors import TierUnavailable
from runners.base import Runner
from runners.protocol import ChatCompletion, ChatCompletionRequest, ResponseFormat, Usage
from tiers.gates import Gate, Verdict, run_gates
from tiers.routing import Route


@dataclass(frozen=True)
class Attempt:
    """One call on one tier; a cascade has several, in order."""

    tier: int
    model: str
    role: str  # primary, retry or escalation
    verdict: Verdict | None = None
    usage: Usage | None = None
    latency_ms: float = 0.0

    @property
    def summary(self) -> str:
        result = self.verdict.header if self.verdict else "ungated"
        return f"{self.role}:tier{self.tier}:{self.model}:{result}"


@dataclass
class Outcome:
    completion: ChatCompletion
    runner: Runner
    attempts: list[Attempt] = field(default_factory=list)
    downgraded: bool = False

    @property
    def escalated(self) -> bool:
        return any(a.role == "escalation" for a in self.attempts)

    @property
    def verdict(self) -> Verdict | None:
        """The first failing verdict if any (it explains an escalation), else the last."""
        verdicts = [a.verdict for a in self.attempts if a.verdict is not None]
        failed = [v for v in verdicts if not v.passed]
        return failed[0] if failed else (verdicts[-1] if verdicts else None)


def pick_runner(route: Route, runners: dict[int, Runner], profile_name: str) -> tuple[Runner, bool]:
    """The route's own tier if it is up; else the first ready tier in the feature's fallback list."""
    own = runners.get(route.tier)
    if own is not None and own.status().state == "ready":
        return own, False
    fallback = route.spec.fallback if route.spec else []
    for tier in fallback:
        runner = runners.get(tier)
        if runner is not None and runner.status().state == "ready":
            return runner, tier > route.tier
    if own is None:
        raise TierUnavailable(
            f"tier {route.tier} is not served by profile {profile_name!r}; add a `tiers.{route.tier}` entry "
            f"(runner, device, model) to the profile, or list another tier under this feature's `fallback`"
        )
    status = own.status()
    detail = f": {status.detail}" if status.detail else ""
    raise TierUnavailable(f"tier {route.tier} ({status.model}) is {status.state.replace('_', ' ')}{detail}; no fallback "
                          f"is allowed for {route.label}, so it is not served by a cheaper tier")


async def answer_gated(route: Route, runner: Runner, request: ChatCompletionRequest, runners: dict[int, Runner],
                       profile_name: str) -> Outcome:
    """Run the feature's gates on its tier, retrying and escalating as the routing table says."""
    assert route.spec is not None
    gates = route.spec.gates()
    outcome = Outcome(completion=None, runner=runner)  # type: ignore[arg-type]
    for role in ["primary"] + ["retry"] * route.spec.retries:
        started = time.perf_counter()
        completion, verdict, usage = await _gated_call(runner, request, gates, seed_offset=len(outcome.attempts))
        outcome.attempts.append(Attempt(runner.tier, runner.model_name, role, verdict, usage, _ms_since(started)))
        outcome.completion = completion
        if verdict.passed:
            return outcome
    target = route.spec.escalation_tier()
    if target is None or target == runner.tier:
        return outcome  # nothing stronger to ask: the failed verdict travels with the answer
    stronger = runners.get(target)
    why = f"{route.label} failed its gate on tier {runner.tier} ({outcome.verdict.header}) and must escalate to tier {target}"
    if stronger is None or stronger.status().state != "ready":
        if stronger is None:
            state = f"not served by profile {profile_name!r}"
        else:
            status = stronger.status()
            state = status.state.replace("_", " ") + (f" ({status.detail})" if status.detail else "")
        raise TierUnavailable(f"{why}, which is {state}; the unverified answer is not returned")
    started = time.perf_counter()
    try:
        asked = _with_gate_schema(request, gates) if getattr(stronger, "enforces_json_schema", True) else request
        completion, verdict, usage = await _gated_call(stronger, asked, gates, seed_offset=0)
    except TierUnavailable as exc:
        raise TierUnavailable(f"{why}: {exc.message}; the unverified answer is not returned") from None
    outcome.attempts.append(Attempt(stronger.tier, stronger.model_name, "escalation", verdict, usage, _ms_since(started)))
    outcome.completion, outcome.runner = completion, stronger
    return outcome


def _with_gate_schema(request: ChatCompletionRequest, gates: list[Gate]) -> ChatCompletionRequest:
    """Escalations ask the stronger tier for the gate's schema as structured output, unless the client chose a format."""
    schema = next((g.args["schema"] for g in gates if g.name == "json_schema"), None)
    if schema is None or request.response_format is not None:
        return request
    response_format = {"type": "json_schema", "json_schema": {"name": "gate", "schema": schema}}
    return request.model_copy(update={"response_format": ResponseFormat.model_validate(response_format)})


async def _gated_call(runner: Runner, request: ChatCompletionRequest, gates: list[Gate],
                      seed_offset: int) -> tuple[ChatCompletion, Verdict, Usage]:
    """One attempt: k samples for a consistency gate, else one; usage counts every sample's tokens."""
    samples = max(g.samples for g in gates)
    wants_logprobs = any(g.needs_logprobs for g in gates)
    asked = request.model_copy(update={"stream": False, "stream_options": None})
    if wants_logprobs:
        asked = asked.model_copy(update={"logprobs": True, "top_logprobs": max(2, request.top_logprobs or 0)})
    if samples > 1:
        temperature = request.temperature if request.temperature else 0.7  # k greedy samples would always agree
        base_seed = request.seed if request.seed is not None else 0
        variants = [asked.model_copy(update={"temperature": temperature, "seed": base_seed + seed_offset * samples + i})
                    for i in range(samples)]
        answers = list(await asyncio.gather(*(runner.complete(v) for v in variants)))
    else:
        if seed_offset and request.seed is not None:
            asked = asked.model_copy(update={"seed": request.seed + seed_offset})
        answers = [await runner.complete(asked)]
    verdict = run_gates(gates, request, answers)
    completion = answers[verdict.chosen]
    if wants_logprobs and not request.logprobs:
        completion.choices[0].logprobs = None
    usage = Usage(prompt_tokens=sum(a.usage.prompt_tokens for a in answers),
                  completion_tokens=sum(a.usage.completion_tokens for a in answers),
                  total_tokens=sum(a.usage.total_tokens for a in answers))
    return completion, verdict, usage


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
