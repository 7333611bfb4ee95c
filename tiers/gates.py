"""Quality gates: plain functions of (request, answers) -> verdict, made by registered factories.

`tool_call` is built in: the policy adds it to every feature request that offers tools; the others are
named in a feature's `gate`.

A gate sees one answer, or k answers when it declares `samples` > 1 (consistency). The verdict names
the gate and its settings, so a ledger row or a header says exactly which check ran and why it failed.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

from runners.answer import Answer
from runners.request import Request


@dataclass(frozen=True)
class Verdict:
    gate: str
    passed: bool
    reason: str = "ok"
    chosen: int = 0  # which of the k answers to return

    @property
    def header(self) -> str:
        return f"{self.gate}:{self.reason}"


GateFn = Callable[[Request, list[Answer]], Verdict]


@dataclass(frozen=True)
class Gate:
    name: str
    args: dict[str, Any]
    check: GateFn
    samples: int = 1
    needs_logprobs: bool = False


GATES: dict[str, Callable[..., Gate]] = {}


def gate_factory(name: str):
    def register(factory: Callable[..., Gate]) -> Callable[..., Gate]:
        GATES[name] = factory
        return factory

    return register


def answer_text(answer: Answer) -> str:
    return answer.first.text or ""


def normalize(text: str) -> str:
    """Case, accents, surrounding punctuation and whitespace do not change a label."""
    text = unicodedata.normalize("NFKC", text).strip().lower()
    return re.sub(r"^[\W_]+|[\W_]+$", "", text)


@gate_factory("json_schema")
def json_schema(schema: dict[str, Any]) -> Gate:
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    def check(request: Request, answers: list[Answer]) -> Verdict:
        try:
            value = json.loads(answer_text(answers[0]))
        except json.JSONDecodeError:
            return Verdict("json_schema", False, "invalid_json")
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "root"
            return Verdict("json_schema", False, f"schema_violation@{where}")
        return Verdict("json_schema", True)

    return Gate("json_schema", {"schema": schema}, check)


@gate_factory("tool_call")
def tool_call() -> Gate:
    """Built in for every request that offers tools: each call names an offered function, its arguments parse
    and match that function's parameters schema, and the call honours `tool_choice`. The tools come with the
    request, so the gate has no settings of its own."""

    def check(request: Request, answers: list[Answer]) -> Verdict:
        choice = request.tool_choice
        for c in answers[0].choices:
            if not c.tool_calls:
                if choice is not None and choice.mode in ("required", "function"):
                    return Verdict("tool_call", False, "no_call")
                continue
            if choice is not None and choice.mode == "none":
                return Verdict("tool_call", False, "call_with_tool_choice_none")
            for call in c.tool_calls:
                reason = _call_problem(request, call.name, call.arguments)
                if reason is not None:
                    return Verdict("tool_call", False, reason)
        return Verdict("tool_call", True)

    return Gate("tool_call", {}, check)


def _call_problem(request: Request, name: str, arguments: str) -> str | None:
    tool = request.tool(name)
    choice = request.tool_choice
    if tool is None:
        return "unknown_function"
    if choice is not None and choice.mode == "function" and choice.name != name:
        return f"not_the_chosen_function@{name}"
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return f"invalid_json@{name}"
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(tool.parameters).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "root"
        return f"schema_violation@{name}/{where}"
    return None


@gate_factory("choices")
def choices(labels: list[str]) -> Gate:
    allowed = {normalize(label) for label in labels}

    def check(request: Request, answers: list[Answer]) -> Verdict:
        ok = normalize(answer_text(answers[0])) in allowed
        return Verdict("choices", ok, "ok" if ok else "not_a_label")

    return Gate("choices", {"labels": labels}, check)


@gate_factory("regex")
def regex(pattern: str) -> Gate:
    compiled = re.compile(pattern)

    def check(request: Request, answers: list[Answer]) -> Verdict:
        ok = compiled.fullmatch(answer_text(answers[0]).strip()) is not None
        return Verdict("regex", ok, "ok" if ok else "no_match")

    return Gate("regex", {"pattern": pattern}, check)


@gate_factory("consistency")
def consistency(k: int, m: int) -> Gate:
    """k samples; passes when at least m agree (after normalizing), and returns one of the majority."""

    def check(request: Request, answers: list[Answer]) -> Verdict:
        keys = [normalize(answer_text(a)) for a in answers]
        majority, count = Counter(keys).most_common(1)[0]
        ok = count >= m
        return Verdict("consistency", ok, "ok" if ok else f"only_{count}_of_{len(keys)}_agree", keys.index(majority))

    return Gate("consistency", {"k": k, "m": m}, check, samples=k)


@gate_factory("confidence")
def confidence(min_mean_logprob: float | None = None, min_top1_margin: float | None = None) -> Gate:
    """Mean token log-probability, or the smallest gap between the chosen and the runner-up token."""

    def check(request: Request, answers: list[Answer]) -> Verdict:
        tokens = answers[0].first.logprobs or []
        if not tokens:
            return Verdict("confidence", False, "no_logprobs")
        if min_mean_logprob is not None:
            mean = sum(t.logprob for t in tokens) / len(tokens)
            if mean < min_mean_logprob:
                return Verdict("confidence", False, f"mean_logprob_{mean:.2f}")
        if min_top1_margin is not None:
            margins = [t.top_logprobs[0].logprob - t.top_logprobs[1].logprob for t in tokens if len(t.top_logprobs) > 1]
            if margins and min(margins) < min_top1_margin:
                return Verdict("confidence", False, f"margin_{min(margins):.2f}")
        return Verdict("confidence", True)

    return Gate("confidence", {"min_mean_logprob": min_mean_logprob, "min_top1_margin": min_top1_margin}, check,
                needs_logprobs=True)


class GateSpec(BaseModel):
    """A feature's gate in the routing table; several keys compose (all must pass, in this order)."""

    model_config = ConfigDict(extra="forbid")
    json_schema: dict[str, Any] | None = Field(default=None, description="JSON Schema the answer must satisfy")
    choices: list[str] | None = Field(default=None, min_length=1, description="allowed labels")
    regex: str | None = Field(default=None, description="pattern the whole answer must match")
    consistency: dict[str, int] | None = Field(default=None, description="{k: samples, m: agreeing needed}")
    confidence: dict[str, float] | None = Field(default=None, description="{min_mean_logprob} and/or {min_top1_margin}")

    @model_validator(mode="after")
    def _buildable(self) -> GateSpec:
        if not self.model_fields_set:
            raise ValueError("a gate needs at least one of: json_schema, choices, regex, consistency, confidence")
        try:
            self.build()
        except (TypeError, re.error, jsonschema.exceptions.SchemaError) as exc:
            raise ValueError(f"gate cannot be built: {exc}") from None
        if self.consistency is not None:
            k, m = self.consistency.get("k", 0), self.consistency.get("m", 0)
            if not 1 <= m <= k <= 16:
                raise ValueError("consistency needs 1 <= m <= k <= 16")
        return self

    def build(self) -> list[Gate]:
        gates = []
        for name in ("json_schema", "choices", "regex", "consistency", "confidence"):
            value = getattr(self, name)
            if value is None:
                continue
            if name == "json_schema":
                gates.append(GATES[name](schema=value))
            elif name == "choices":
                gates.append(GATES[name](labels=value))
            elif name == "regex":
                gates.append(GATES[name](pattern=value))
            else:
                gates.append(GATES[name](**value))
        return gates


def run_gates(gates: list[Gate], request: Request, answers: list[Answer]) -> Verdict:
    """The first failing gate's verdict, or a pass that keeps the consistency gate's chosen answer."""
    chosen = 0
    for gate in gates:
        verdict = gate.check(request, answers if gate.samples > 1 else [answers[chosen]])
        if gate.samples > 1:
            chosen = verdict.chosen
        if not verdict.passed:
            return Verdict(verdict.gate, False, verdict.reason, chosen)
    return Verdict("+".join(g.name for g in gates), True, "ok", chosen)
