"""Per-feature policy: run the gates, retry or escalate, and keep every attempt for the ledger.

A Tier 2 (or gated Tier 3) answer that fails its gate is retried on the same tier `retries` times,
then escalated to `escalate_to` (Tier 1 by default), whose answer is returned. The first attempt is
asked exactly as the client asked; an escalation also asks for a json_schema gate's schema as
structured output, so the stronger tier is held to the format the weaker one missed (where that tier
enforces json_schema at all). Which tier answers first is `tiers/dispatch.py`'s decision.

A feature request that offers tools is gated by the built-in `tool_call` check as well (after the
feature's own gates), so a bad call retries and escalates like any failed answer, to Tier 1 by
default even when the feature declares no gate of its own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runners.answer import Answer, Usage
from runners.base import Runner
from runners.errors import TierUnavailable
from runners.request import Request, ResponseFormat
from tiers.gates import GATES, Gate, Verdict, run_gates

if TYPE_CHECKING:
    from tiers.dispatch import Dispatch
    from tiers.tier_runners import TierRunners


@dataclass(frozen=True)
class Attempt:
    """One call on one tier; a cascade has several, in order."""

    tier: int
    model: str
    role: str  # primary, retry or escalation
    runner: str = ""
    verdict: Verdict | None = None
    usage: Usage | None = None
    latency_ms: float = 0.0
    tool_calls: int = 0
    replica: str | None = None  # the pool member that answered, when the tier is a pool

    @property
    def summary(self) -> str:
        result = self.verdict.header if self.verdict else "ungated"
        return f"{self.role}:tier{self.tier}:{self.model}:{result}"


@dataclass
class Outcome:
    answer: Answer | None
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


def gates(d: Dispatch, request: Request) -> list[Gate]:
    """The checks this request's answer must pass: the feature's own, and `tool_call` when tools are offered."""
    spec = d.route.spec
    if spec is None:
        return []
    return spec.gates() + ([GATES["tool_call"]()] if request.tools else [])


async def answer(d: Dispatch, request: Request, runners: TierRunners) -> Outcome:
    """The dispatched runner's answer, through the feature's gates and cascade when it has any."""
    if gates(d, request):
        outcome = await _answer_gated(d, request, runners)
    else:
        started = time.perf_counter()
        reply = await d.runner.complete(request)
        attempt = Attempt(d.runner.tier, d.runner.model_name, "primary", d.runner.kind, usage=reply.usage,
                          latency_ms=_ms_since(started), tool_calls=reply.tool_call_count, replica=reply.replica)
        outcome = Outcome(answer=reply, runner=d.runner, attempts=[attempt])
    outcome.downgraded = d.downgraded
    return outcome


async def _answer_gated(d: Dispatch, request: Request, runners: TierRunners) -> Outcome:
    route, runner = d.route, d.runner
    assert route.spec is not None
    checks = gates(d, request)
    outcome = Outcome(answer=None, runner=runner)
    for role in ["primary"] + ["retry"] * route.spec.retries:
        started = time.perf_counter()
        reply, verdict, usage = await _gated_call(runner, request, checks, seed_offset=len(outcome.attempts))
        outcome.attempts.append(Attempt(runner.tier, runner.model_name, role, runner.kind, verdict, usage,
                                        _ms_since(started), reply.tool_call_count, reply.replica))
        outcome.answer = reply
        if verdict.passed:
            return outcome
    target = route.spec.escalation_tier() or (1 if route.tier > 1 else None)  # no own gate: tool_call failed
    if target is None or target == runner.tier:
        return outcome  # nothing stronger to ask: the failed verdict travels with the answer
    stronger = runners.get(target)
    why = f"{route.label} failed its gate on tier {runner.tier} ({outcome.verdict.header}) and must escalate to tier {target}"
    if stronger is None or not stronger.serving():
        if stronger is None:
            state = f"not served by profile {runners.name!r}"
        else:
            status = stronger.status()
            state = status.state.replace("_", " ") + (f" ({status.detail})" if status.detail else "")
        raise TierUnavailable(f"{why}, which is {state}; the unverified answer is not returned")
    started = time.perf_counter()
    try:
        asked = _with_gate_schema(request, checks) if stronger.capabilities.json_schema else request
        reply, verdict, usage = await _gated_call(stronger, asked, checks, seed_offset=0)
    except TierUnavailable as exc:
        raise TierUnavailable(f"{why}: {exc.message}; the unverified answer is not returned") from None
    outcome.attempts.append(Attempt(stronger.tier, stronger.model_name, "escalation", stronger.kind, verdict, usage,
                                    _ms_since(started), reply.tool_call_count, reply.replica))
    outcome.answer, outcome.runner = reply, stronger
    return outcome


def _with_gate_schema(request: Request, gates: list[Gate]) -> Request:
    """Escalations ask the stronger tier for the gate's schema as structured output, unless the client chose a format."""
    schema = next((g.args["schema"] for g in gates if g.name == "json_schema"), None)
    if schema is None or request.response_format is not None:
        return request
    return request.model_copy(update={"response_format": ResponseFormat(type="json_schema", name="gate", schema=schema)})


async def _gated_call(runner: Runner, request: Request, gates: list[Gate], seed_offset: int) -> tuple[Answer, Verdict, Usage]:
    """One attempt: k samples for a consistency gate, else one; usage counts every sample's tokens.

    Log probabilities are asked for only where a gate needs them. A tier that returns none (Anthropic)
    is judged by its other gates only, or marked `unchecked_no_logprobs`: never a 400 for a parameter
    the client did not send, and never a failure for something the tier cannot give."""
    if not runner.capabilities.logprobs:
        checkable = [g for g in gates if not g.needs_logprobs]
        if not checkable:  # nothing this tier's answer can be judged by: say so rather than fail it
            reply = await runner.complete(request.model_copy(update={"stream": False}))
            return reply, Verdict("+".join(g.name for g in gates), True, "unchecked_no_logprobs"), reply.usage
        gates = checkable
    samples = max(g.samples for g in gates)
    wants_logprobs = any(g.needs_logprobs for g in gates)
    asked = request.model_copy(update={"stream": False})
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
    reply = answers[verdict.chosen]
    if wants_logprobs and not request.logprobs:
        for choice in reply.choices:
            choice.logprobs = None
    usage = sum((a.usage for a in answers), Usage())
    return reply, verdict, usage


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000
