"""The calibration maths and the routing-table edit, checked against scipy and against the loaded table.

The real-model check (a threshold fitted on one half of a shipped suite holds on the other, through a real
gateway) is tests/test_calibrate_e2e.py."""

from __future__ import annotations

import math
import random

import pytest
from scipy.stats import beta

from evals.calibrate import (Point, clopper_pearson, curve, evaluate, gate_update, held_out_verdict, pick,
                             written_threshold)
from evals.gate_signals import Signal, request_body, token_signals
from evals.routing_edit import write_gate, write_tier
from evals.suite import load_suite
from hardware.errors import ConfigError
from tiers.routing import DEFAULT_ROUTING, load_routing


@pytest.mark.parametrize("failures,n", [(0, 10), (1, 10), (5, 40), (40, 40), (3, 200), (57, 113), (0, 1)])
def test_clopper_pearson_matches_the_beta_quantiles(failures, n):
    low, high = clopper_pearson(failures, n)
    want_low = 0.0 if failures == 0 else beta.ppf(0.025, failures, n - failures + 1)
    want_high = 1.0 if failures == n else beta.ppf(0.975, failures + 1, n - failures)
    assert low == pytest.approx(want_low, abs=1e-9) and high == pytest.approx(want_high, abs=1e-9)


def test_clopper_pearson_without_data_says_nothing():
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_a_held_out_rate_above_the_bound_contradicts_it_only_when_its_own_interval_starts_above():
    assert held_out_verdict(Point(0.0, 32, 8, 100), 0.282).startswith("inside")  # 25.0%
    noisy = held_out_verdict(Point(0.0, 32, 11, 100), 0.282)  # 34.4% of 32: interval [18.6%, 53.2%]
    assert noisy.startswith("above the predicted bound 28.2% but within sampling noise") and "18.6%" in noisy
    assert held_out_verdict(Point(0.0, 32, 18, 100), 0.282).startswith("OUTSIDE")  # 56.2%: interval from 37.7%
    assert held_out_verdict(Point(0.0, 0, 0, 100), 0.282).startswith("inside")  # nothing accepted: nothing failed


def signals(values: list[tuple[float, bool]], gates_ok: bool = True) -> list[Signal]:
    return [Signal(str(i), correct, gates_ok, mean, None) for i, (mean, correct) in enumerate(values)]


def test_the_pick_accepts_the_most_answers_whose_failure_bound_meets_the_target():
    rng = random.Random(3)
    # confident answers are right far more often: P(correct) rises with the signal
    data = [(-x, rng.random() > x) for x in (rng.random() for _ in range(400))]
    points = curve(signals(data), "mean_logprob")
    assert [p.accepted for p in points] == sorted(p.accepted for p in points)  # strictest first
    chosen = pick(points, 0.20)
    assert chosen is not None and chosen.interval[1] <= 0.20 and 0 < chosen.accepted < 400
    for p in points:  # nothing accepting more also meets the target
        if p.accepted > chosen.accepted:
            assert p.interval[1] > 0.20
    threshold = written_threshold(points, chosen, "mean_logprob")
    again = evaluate(signals(data), "mean_logprob", threshold)
    assert (again.accepted, again.failures) == (chosen.accepted, chosen.failures)  # the written value reproduces it


def test_answers_failing_the_other_gates_are_never_accepted_and_a_hopeless_tier_gets_no_threshold():
    points = curve(signals([(-0.1, True)] * 50, gates_ok=False), "mean_logprob")
    assert points == []
    assert pick(curve(signals([(-0.1, False)] * 50), "mean_logprob"), 0.05) is None


def test_margin_without_a_runner_up_passes_and_agreement_uses_the_majority_answer():
    s = [Signal("a", True, True, -0.2, None), Signal("b", False, True, -0.2, 0.5),
         Signal("c", False, True, -0.3, 2.0, agreement=5, samples=5, majority_correct=True, majority_gates_ok=True)]
    assert evaluate(s, "top1_margin", 3.0).accepted == 1  # only "a": no step had two candidates
    assert evaluate(s, "agreement", 4).failures == 0 and evaluate(s, "agreement", 4).accepted == 1
    assert gate_update("agreement", 4, 5) == {"consistency": {"k": 5, "m": 4}, "confidence": None}
    assert gate_update("top1_margin", 0.7, 0) == {"confidence": {"min_top1_margin": 0.7}, "consistency": None}


def test_token_signals_are_the_confidence_gate_s_arithmetic():
    tokens = [{"logprob": -0.5, "top_logprobs": [{"logprob": -0.5}, {"logprob": -2.0}]},
              {"logprob": -0.1, "top_logprobs": [{"logprob": -0.1}, {"logprob": -0.4}]}]
    mean, margin = token_signals(tokens)
    assert mean == pytest.approx(-0.3) and margin == pytest.approx(0.3)
    assert token_signals([]) == (None, None)


def test_the_request_is_the_feature_s_own():
    table = load_routing()
    suite = load_suite("sst2-sentiment")
    body = request_body(table.features["review-sentiment"], suite, suite.samples(1)[0], 3)
    assert body["messages"][0] == {"role": "system", "content": table.features["review-sentiment"].request.system}
    assert body["response_format"]["json_schema"]["schema"] == {"type": "string", "enum": ["negative", "positive"]}
    assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["model"] == "tier:3"


def test_writing_a_gate_keeps_comments_and_a_backup(tmp_path):
    path = tmp_path / "routing.yaml"
    original = DEFAULT_ROUTING.read_text()
    path.write_text(original)
    backup = write_gate(path, "review-sentiment", {"confidence": {"min_mean_logprob": -0.4321}, "consistency": None})
    assert backup.read_text() == original
    table = load_routing(path)
    assert table.features["review-sentiment"].gate.confidence == {"min_mean_logprob": -0.4321}
    assert table.features["review-sentiment"].gate.choices == ["negative", "positive"]
    text = path.read_text()
    assert text.count("\n") == original.count("\n") and "# suite: sst2-sentiment" in text
    # a block-style gate (intent-detection's choices span two lines) gets the key as a line of its own
    write_gate(path, "intent-detection", {"consistency": {"k": 5, "m": 4}, "confidence": None})
    assert load_routing(path).features["intent-detection"].gate.consistency == {"k": 5, "m": 4}
    assert load_routing(path).features["intent-detection"].gate.choices[-1] == "rate_book"
    # a feature with no gate gets one; a flow-style feature is rewritten on its line
    write_gate(path, "knowledge-qa", {"confidence": {"min_top1_margin": 0.25}})
    assert load_routing(path).features["knowledge-qa"].gate.confidence == {"min_top1_margin": 0.25}


def test_flow_features_and_tier_moves(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("features:\n  a: {tier: 2, value: internal, owner: x, failure_cost_usd: 1}   # keep\n"
                    "  b:\n    tier: 1    # comment kept\n    value: risk\n    owner: y\n    failure_cost_usd: 9\n")
    write_gate(path, "a", {"confidence": {"min_mean_logprob": -1.0}})
    write_tier(path, "b", 3)
    write_tier(path, "a", 3)
    table = load_routing(path)
    assert (table.features["a"].tier, table.features["b"].tier) == (3, 3)
    assert "# keep" in path.read_text() and "tier: 3    # comment kept" in path.read_text()


def test_an_edit_that_breaks_the_table_is_not_kept(tmp_path):
    path = tmp_path / "routing.yaml"
    path.write_text(DEFAULT_ROUTING.read_text())
    before = path.read_text()
    with pytest.raises(ConfigError, match="escalate_to must be a stronger tier"):
        write_tier(path, "field-extraction", 1)  # its escalate_to: 1 would no longer be stronger
    assert path.read_text() == before
    with pytest.raises(ConfigError, match="not in the routing table"):
        write_tier(path, "no-such-feature", 1)


def test_a_threshold_never_sits_on_an_example():
    points = curve(signals([(-0.2, True), (-0.5, True), (-0.9, False)]), "mean_logprob")
    chosen = points[1]
    t = written_threshold(points, chosen, "mean_logprob")
    assert -0.9 < t < -0.5 and not math.isclose(t, -0.5)
