"""Scorers: plain functions made by registered factories; the registry keeps the name and the arguments.

A scorer takes the answer text and the sample's target and returns a `Score`: `correct`, `wrong`, or
`unparseable` (no answer of the expected shape could be read at all). Each factory is small and looks
like its neighbours, as in inspect_ai's `scorer/_match.py`.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, ConfigDict, Field, model_validator

Verdict = Literal["correct", "wrong", "unparseable"]


@dataclass(frozen=True)
class Score:
    verdict: Verdict
    parsed: Any = None  # what the scorer read out of the answer


@dataclass(frozen=True)
class Scorer:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    score: Callable[[str, Any], Score] = lambda answer, target: Score("unparseable")

    @property
    def spec(self) -> str:
        return json.dumps({"name": self.name, "args": self.args}, sort_keys=True)


SCORERS: dict[str, Callable[..., Scorer]] = {}


def scorer_factory(name: str):
    def register(factory: Callable[..., Scorer]) -> Callable[..., Scorer]:
        SCORERS[name] = factory
        return factory

    return register


def normalize(text: str) -> str:
    """Lowercase, punctuation and underscores to spaces, whitespace collapsed."""
    text = text.lower().translate(str.maketrans({c: " " for c in string.punctuation}))
    return " ".join(text.split())


@scorer_factory("label")
def label(labels: list[str]) -> Scorer:
    """The answer names one of `labels`: the whole answer, else the label mentioned first."""
    normalized = {normalize(x): x for x in labels}

    def score(answer: str, target: Any) -> Score:
        text = normalize(answer)
        found = normalized.get(text)
        if found is None:
            hits = [(m.start(), lab) for norm, lab in normalized.items()
                    for m in [re.search(rf"\b{re.escape(norm)}\b", text)] if m]
            if not hits:
                return Score("unparseable")
            found = min(hits, key=lambda h: (h[0], -len(h[1])))[1]
        return Score("correct" if found == target else "wrong", found)

    return Scorer("label", {"labels": labels}, score)


@scorer_factory("choice")
def choice(letters: str = "ABCD") -> Scorer:
    """A multiple-choice letter: `B`, `(B)`, `B.`, `Answer: B`, `The answer is B) ...`."""
    pattern = re.compile(rf"(?:answer(?: is)?\s*[:\-]?\s*\(?([{letters}])\b)|(?:^|[\s(])([{letters}])(?:[).:,\s]|$)")

    def score(answer: str, target: Any) -> Score:
        match = pattern.search(answer.strip())
        if not match:
            return Score("unparseable")
        letter = match.group(1) or match.group(2)
        return Score("correct" if letter == target else "wrong", letter)

    return Scorer("choice", {"letters": letters}, score)


NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


@scorer_factory("number")
def number(tolerance: float = 1e-6, position: Literal["last", "first"] = "last") -> Scorer:
    """A number in the answer (the last by default, where worked answers end), within `tolerance` of the target."""

    def score(answer: str, target: Any) -> Score:
        found = NUMBER.findall(answer)
        if not found:
            return Score("unparseable")
        value = float((found[-1] if position == "last" else found[0]).replace(",", ""))
        return Score("correct" if abs(value - float(target)) <= tolerance else "wrong", value)

    return Scorer("number", {"tolerance": tolerance, "position": position}, score)


def _json_object(answer: str) -> Any:
    text = answer.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.S)
    if fenced:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end <= start:
            raise
        return json.loads(text[start:end + 1])


@scorer_factory("json_fields")
def json_fields(schema: dict[str, Any], fields: list[str]) -> Scorer:
    """The answer is JSON valid under `schema` (else unparseable) whose `fields` equal the target's (else wrong).

    Strings are compared normalized (case, punctuation, spacing)."""
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)

    def same(a: Any, b: Any) -> bool:
        return normalize(a) == normalize(b) if isinstance(a, str) and isinstance(b, str) else a == b

    def score(answer: str, target: Any) -> Score:
        try:
            value = _json_object(answer)
        except json.JSONDecodeError:
            return Score("unparseable")
        if not validator.is_valid(value):
            return Score("unparseable", value)
        ok = all(same(value.get(f), target.get(f)) for f in fields)
        return Score("correct" if ok else "wrong", value)

    return Scorer("json_fields", {"schema": schema, "fields": fields}, score)


@scorer_factory("regex")
def regex(pattern: str, group: int = 0) -> Scorer:
    """The first match of `pattern` (its `group`) equals the target, compared normalized."""
    compiled = re.compile(pattern)

    def score(answer: str, target: Any) -> Score:
        match = compiled.search(answer)
        if not match:
            return Score("unparseable")
        found = match.group(group)
        return Score("correct" if normalize(found) == normalize(str(target)) else "wrong", found)

    return Scorer("regex", {"pattern": pattern, "group": group}, score)


@scorer_factory("exact")
def exact() -> Scorer:
    """The whole answer equals the target, compared normalized (for replays of stored answers)."""

    def score(answer: str, target: Any) -> Score:
        if not answer.strip():
            return Score("unparseable")
        return Score("correct" if normalize(answer) == normalize(str(target)) else "wrong", answer)

    return Scorer("exact", {}, score)


class ScorerSpec(BaseModel):
    """`{name: label, args: {labels: [...]}}` in a suite file; checked against the factory when loaded."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="one of: " + ", ".join(sorted(SCORERS)))
    args: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the factory")

    @model_validator(mode="after")
    def _buildable(self) -> ScorerSpec:
        self.build()
        return self

    def build(self) -> Scorer:
        factory = SCORERS.get(self.name)
        if factory is None:
            raise ValueError(f"unknown scorer {self.name!r}; use one of {', '.join(sorted(SCORERS))}")
        try:
            return factory(**self.args)
        except TypeError as exc:
            raise ValueError(f"scorer {self.name!r}: {exc}") from None
        except jsonschema.SchemaError as exc:
            raise ValueError(f"scorer {self.name!r}: invalid JSON schema: {exc.message}") from None
