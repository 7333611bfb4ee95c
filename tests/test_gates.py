"""Gates are plain functions of (request, answers): checked here on hand-made completions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runners.answer import Answer
from runners.request import Request
from runners.wire.openai_chat import from_completion
from runners.wire.openai_chat_protocol import ChatCompletion
from tiers.gates import GateSpec, run_gates

REQUEST = Request(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


def answer(text: str, logprobs: list[tuple[float, float]] | None = None) -> Answer:
    content = None
    if logprobs is not None:
        content = [{"token": "t", "logprob": lp, "top_logprobs": [{"token": "t", "logprob": lp},
                                                                  {"token": "u", "logprob": second}]}
                   for lp, second in logprobs]
    return from_completion(ChatCompletion.model_validate({
        "id": "c", "created": 0, "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        "choices": [{"message": {"content": text}, "finish_reason": "stop",
                     "logprobs": {"content": content} if content else None}],
    }))


def verdict(spec: dict, *texts: str, **kw):
    gates = GateSpec.model_validate(spec).build()
    return run_gates(gates, REQUEST, [answer(t, **kw) for t in texts])


SCHEMA = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}


@pytest.mark.parametrize(("text", "passed", "reason"), [
    ('{"age": 3}', True, "ok"),
    ('{"age": "three"}', False, "schema_violation@age"),
    ('{"age": 3,}', False, "invalid_json"),
    ('```json\n{"age": 3}\n```', False, "invalid_json"),
    ("{}", False, "schema_violation@root"),
])
def test_json_schema_gate(text, passed, reason):
    result = verdict({"json_schema": SCHEMA}, text)
    assert (result.passed, result.reason, result.gate) == (passed, reason, "json_schema")


@pytest.mark.parametrize(("text", "passed"), [("Billing", True), ("  billing. ", True), ("BILLING!", True),
                                              ("billing issue", False), ("refund", False)])
def test_choices_gate_normalizes(text, passed):
    assert verdict({"choices": ["billing", "shipping"]}, text).passed is passed


def test_regex_gate_matches_the_whole_answer():
    assert verdict({"regex": r"[A-Z]{3}-\d+"}, "ABC-12").passed
    assert verdict({"regex": r"[A-Z]{3}-\d+"}, "see ABC-12").reason == "no_match"


def test_consistency_gate_returns_the_majority():
    result = verdict({"consistency": {"k": 3, "m": 2}}, "Paris", "paris.", "Lyon")
    assert result.passed and result.chosen == 0
    failed = verdict({"consistency": {"k": 3, "m": 3}}, "Paris", "paris", "Lyon")
    assert not failed.passed and failed.reason == "only_2_of_3_agree"


def test_confidence_gate_uses_logprobs():
    confident = verdict({"confidence": {"min_mean_logprob": -0.5}}, "x", logprobs=[(-0.1, -3.0), (-0.2, -2.0)])
    assert confident.passed
    unsure = verdict({"confidence": {"min_mean_logprob": -0.5}}, "x", logprobs=[(-1.5, -1.6)])
    assert unsure.reason == "mean_logprob_-1.50"
    thin = verdict({"confidence": {"min_top1_margin": 0.5}}, "x", logprobs=[(-0.6, -0.9)])
    assert thin.reason == "margin_0.30"
    assert verdict({"confidence": {"min_mean_logprob": -1}}, "x").reason == "no_logprobs"


def test_gates_compose_and_report_the_first_failure():
    spec = {"json_schema": SCHEMA, "regex": r"\{.*\}"}
    assert verdict(spec, '{"age": 1}').gate == "json_schema+regex"
    assert verdict(spec, '{"age": 1} ').passed
    assert verdict(spec, "nope").gate == "json_schema"


@pytest.mark.parametrize("spec", [{}, {"regex": "("}, {"json_schema": {"type": "nonsense"}},
                                  {"consistency": {"k": 2, "m": 3}}, {"choices": []}, {"magic": 1}])
def test_bad_gate_specs_are_rejected_at_load(spec):
    with pytest.raises(ValidationError):
        GateSpec.model_validate(spec)
