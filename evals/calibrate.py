"""Calibrated gates: the threshold that accepts the most cheap answers while their failure rate stays under a target.

For one signal (mean logprob, top-1 margin or consistency agreement), every distinct value the cheap tier
produced is a candidate threshold; at each, the answers accepted are those at or above it that also pass the
feature's other gates. The chosen threshold is the one accepting the most answers whose failure rate has a
Clopper-Pearson (exact binomial) 95% interval with an upper bound at or under the target; everything below
it escalates. Like RouteLLM's calibrate_threshold.py the threshold comes from data, but from a bound on the
failures it lets through rather than from a quantile of the scores.

The threshold written sits halfway between the lowest accepted value and the highest rejected one, so the
gate's own arithmetic in serving cannot land an example on the other side of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from evals.gate_signals import Signal

SIGNALS = ("mean_logprob", "top1_margin", "agreement")
GATE_KEYS = {"mean_logprob": "min_mean_logprob", "top1_margin": "min_top1_margin"}


def _binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space (exact enough for n in the tens of thousands)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
    return min(total, 1.0)


def clopper_pearson(failures: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) two-sided interval for a binomial proportion; (0, 1) without data."""
    if n == 0:
        return 0.0, 1.0
    alpha = (1 - level) / 2

    def solve(condition) -> float:  # bisection on p: condition(p) is True below the root, False above
        low, high = 0.0, 1.0
        for _ in range(60):
            mid = (low + high) / 2
            low, high = (mid, high) if condition(mid) else (low, mid)
        return (low + high) / 2

    lower = 0.0 if failures == 0 else solve(lambda p: 1 - _binomial_cdf(failures - 1, n, p) < alpha)
    upper = 1.0 if failures == n else solve(lambda p: _binomial_cdf(failures, n, p) > alpha)
    return lower, upper


@dataclass(frozen=True)
class Point:
    """One candidate threshold: answers at or above it (that pass the other gates) are accepted."""

    threshold: float
    accepted: int
    failures: int
    n: int  # examples in the half: accepted + escalated

    @property
    def acceptance(self) -> float:
        return self.accepted / self.n if self.n else 0.0

    @property
    def escalation(self) -> float:
        return 1 - self.acceptance

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.accepted if self.accepted else None

    @property
    def interval(self) -> tuple[float, float]:
        return clopper_pearson(self.failures, self.accepted)


def value(signal: Signal, name: str) -> float | None:
    """The signal's value, None when the gate would reject it outright (no logprobs at all)."""
    if name == "top1_margin":
        if signal.mean_logprob is None:
            return None  # no tokens: the confidence gate answers no_logprobs
        return math.inf if signal.top1_margin is None else signal.top1_margin  # no second candidate: passes
    return getattr(signal, name)


def _outcome(signal: Signal, name: str) -> tuple[bool, bool]:
    """(passes the other gates, correct) of the answer the gate would return: the majority one for agreement."""
    if name == "agreement":
        return bool(signal.majority_gates_ok), bool(signal.majority_correct)
    return signal.gates_ok, signal.correct


def curve(signals: list[Signal], name: str) -> list[Point]:
    """Every candidate threshold, strictest first."""
    n = len(signals)
    scored = sorted(((v, *_outcome(s, name)) for s in signals if (v := value(s, name)) is not None and
                     _outcome(s, name)[0]), key=lambda t: -t[0])
    points, accepted, failures, i = [], 0, 0, 0
    while i < len(scored):
        threshold = scored[i][0]
        while i < len(scored) and scored[i][0] == threshold:
            accepted, failures, i = accepted + 1, failures + (not scored[i][2]), i + 1
        points.append(Point(threshold, accepted, failures, n))
    return points


def pick(points: list[Point], target: float) -> Point | None:
    """The point accepting the most answers whose failure rate's upper bound is at or under the target."""
    fitting = [p for p in points if p.interval[1] <= target]
    return max(fitting, key=lambda p: p.accepted) if fitting else None


def written_threshold(points: list[Point], chosen: Point, name: str) -> float:
    """Halfway between the chosen value and the next lower one (the gate rejects strictly below it)."""
    if name == "agreement":
        return float(int(chosen.threshold))
    lower = [p.threshold for p in points if p.threshold < chosen.threshold]
    if chosen.threshold == math.inf:  # only answers with no runner-up token at any step: no finite margin passes
        return 1e6
    if not lower:
        return chosen.threshold - 1e-6
    middle = (chosen.threshold + lower[0]) / 2
    rounded = round(middle, 4)
    return rounded if lower[0] < rounded < chosen.threshold else middle


def evaluate(signals: list[Signal], name: str, threshold: float) -> Point:
    """Apply a written threshold to other examples (the held-out half): accepted answers and their failures."""
    accepted = failures = 0
    for s in signals:
        v = value(s, name)
        ok, correct = _outcome(s, name)
        if v is not None and ok and v >= threshold:
            accepted, failures = accepted + 1, failures + (not correct)
    return Point(threshold, accepted, failures, len(signals))


def held_out_verdict(checked: Point, predicted_high: float) -> str:
    """Whether the held-out half agrees with the fit's bound. Its point rate alone is a sample of a few dozen
    answers and lands above a correct bound often; only its own 95% interval starting above the bound
    contradicts the prediction."""
    if checked.failure_rate is None or checked.failure_rate <= predicted_high:
        return f"inside the predicted bound {predicted_high:.1%}"
    low = checked.interval[0]
    if low <= predicted_high:
        return (f"above the predicted bound {predicted_high:.1%} but within sampling noise of {checked.accepted} "
                f"answers (its own 95% interval starts at {low:.1%})")
    return f"OUTSIDE the predicted bound {predicted_high:.1%}: even its 95% interval starts above it, at {low:.1%}"


def gate_update(name: str, threshold: float, k: int) -> dict:
    """The gate keys to write: the calibrated signal replaces the other signal gate (json_schema, choices and
    regex stay as they are)."""
    if name == "agreement":
        return {"consistency": {"k": k, "m": int(threshold)}, "confidence": None}
    return {"confidence": {GATE_KEYS[name]: threshold}, "consistency": None}


def format_curve(points: list[Point], name: str, chosen: Point | None, target: float, rows: int = 20) -> str:
    """Acceptance against the failure bound, at most `rows` lines spread over the curve, the chosen one marked."""
    if not points:
        return f"{name}: no answer passes the feature's other gates; every request would escalate"
    step = max(1, math.ceil(len(points) / rows))
    shown = sorted(set(points[::step]) | {points[-1]} | ({chosen} if chosen else set()), key=lambda p: -p.threshold)
    lines = [f"{name} (target: failure bound <= {target:.1%})",
             f"  {'threshold':>12} {'accepted':>10} {'acceptance':>10} {'failures':>9} {'failure [95% CP]':>26}"]
    for p in shown:
        low, high = p.interval
        mark = "  <= chosen" if p == chosen else ""
        lines.append(f"  {p.threshold:>12.4f} {p.accepted:>10} {p.acceptance:>10.1%} {p.failures:>9} "
                     f"{p.failure_rate:>8.1%} [{low:.1%}, {high:.1%}]{mark}")
    return "\n".join(lines)


def describe(point: Point, label: str) -> str:
    low, high = point.interval
    rate = f"{point.failure_rate:.1%} [{low:.1%}, {high:.1%}]" if point.accepted else "n/a (nothing accepted)"
    return (f"{label}: accepts {point.accepted}/{point.n} ({point.acceptance:.1%}), escalates {point.escalation:.1%}; "
            f"failure of accepted answers {rate}")
