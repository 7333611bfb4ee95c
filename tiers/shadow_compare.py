"""What a feature's shadow declares, and how two answers (or a grade) become agreement.

`shadow: {sample: 0.05, tier: 1, compare: label}` in the routing table: 5% of the feature's answered
requests are asked again of Tier 1 after the response is sent (tiers/shadow.py), and the two answers
compared. A disagreement is an estimated failure of the weaker of the two tiers, on traffic that never
gets explicit feedback.

- `exact`: the same text, whitespace aside;
- `label`: the same label, case, accents and surrounding punctuation aside (as the `choices` gate reads it);
- `json_fields`: both answers are JSON objects whose `fields` (default: every key of the shadow's answer)
  are equal, strings compared as labels; an answer that is not JSON disagrees;
- `judge`: no second answer: the shadow tier grades the feature's answer with the fixed rubric below
  (RUBRIC, documented in docs/shadow.md), PASS or FAIL.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hardware.profile import TierNumber
from runners.request import Message, Request, TextPart
from tiers.gates import normalize

Compare = Literal["exact", "label", "json_fields", "judge"]

RUBRIC = """You grade one answer given by an AI feature. You see the request it was given and the answer.
The answer PASSES when it does what the request asks: it is correct, it follows every instruction and the
output format the request sets, and it states nothing the request does not support.
The answer FAILS when it is wrong, incomplete, in another format than the one asked for, or invents facts.
Judge only the answer; do not answer the request yourself. Reply with one word: PASS or FAIL."""
JUDGE_MAX_TOKENS = 8
VERDICT = re.compile(r"\b(PASS|FAIL)\b", re.I)


class Shadow(BaseModel):
    """A share of the feature's answers asked again of another tier, off the request path, and compared."""

    model_config = ConfigDict(extra="forbid")
    sample: float = Field(gt=0, le=1, description="share of answered requests asked again (0.05 = 5%)")
    tier: TierNumber = Field(description="the tier that answers again (or grades, with judge)")
    compare: Compare = Field(description="exact | label | json_fields | judge: how the answers are compared")
    fields: list[str] | None = Field(
        default=None, min_length=1, description="json_fields: the keys compared (default: every key of the shadow's)")
    queue: int = Field(default=64, ge=1, le=10_000,
                       description="samples waiting at most; when full, new samples are dropped and counted")

    @model_validator(mode="after")
    def _fields_for_json(self) -> Shadow:
        if self.fields is not None and self.compare != "json_fields":
            raise ValueError("fields is for compare: json_fields")
        return self


def agree(shadow: Shadow, answer: str, other: str) -> bool | None:
    """Whether the feature's answer and the shadow's agree; None when the shadow's gives nothing to compare."""
    if shadow.compare == "exact":
        return " ".join(answer.split()) == " ".join(other.split())
    if shadow.compare == "label":
        return normalize(answer) == normalize(other)
    theirs = _json_object(other)
    if theirs is None:
        return None
    ours = _json_object(answer)
    if ours is None:
        return False
    return all(_same(ours.get(k), theirs.get(k)) for k in (shadow.fields or list(theirs)))


def judge_request(request: Request, answer: str) -> Request:
    """The grading call: the rubric as system message, then the request as the feature sent it, and the answer."""
    asked = request.prompt if request.prompt is not None else "\n".join(
        f"[{m.role}] {m.text()}" for m in request.messages)
    user = f"REQUEST:\n{asked}\n\nANSWER TO GRADE:\n{answer}\n\nVerdict (PASS or FAIL):"
    return Request(messages=[Message(role="system", content=[TextPart(text=RUBRIC)]),
                             Message(role="user", content=[TextPart(text=user)])],
                   max_tokens=JUDGE_MAX_TOKENS, temperature=0, seed=0)


def judge_verdict(text: str) -> bool | None:
    """PASS -> agreed, FAIL -> disagreed; anything else is no grade."""
    match = VERDICT.search(text or "")
    return None if match is None else match.group(1).upper() == "PASS"


def _json_object(text: str) -> dict | None:
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        return None
    return value if isinstance(value, dict) else None


def _same(a: Any, b: Any) -> bool:
    return normalize(a) == normalize(b) if isinstance(a, str) and isinstance(b, str) else a == b
