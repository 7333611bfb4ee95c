"""Promotion: the candidate and the incumbent on the same examples; the candidate must meet the tier's target
and must not be significantly worse than the incumbent.

- Target: the upper bound of the candidate's 95% Wilson interval for its failure rate is at or under the target
  (`--target`, else the suite's `failure_target`, else the routing table's `failure_targets[tier]`).
- Paired: an exact one-sided McNemar test, i.e. a binomial test on the discordant pairs. Of the n = b + c pairs
  where exactly one model failed, b are the incumbent's wins; under "equally good" b ~ Binomial(n, 1/2).
  The candidate is significantly worse when P(B >= b) < alpha (default 0.05). No discordant pairs: p = 1.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from evals.store import Result
from hardware.errors import ConfigError
from hardware.profile import load_profile, profile_path
from tiers.ledger.stats import Rate


def mcnemar_exact_worse(incumbent_wins: int, candidate_wins: int) -> float:
    """One-sided exact McNemar p-value that the candidate is worse: P(B >= b) for B ~ Binomial(b + c, 1/2),
    summed exactly in integers."""
    n = incumbent_wins + candidate_wins
    return sum(math.comb(n, k) for k in range(incumbent_wins, n + 1)) / 2**n


@dataclass
class SuiteDecision:
    suite: str
    paired_n: int
    target: float
    target_source: str
    candidate_failures: int
    candidate_upper: float
    incumbent_failures: int
    incumbent_upper: float
    incumbent_wins: int  # incumbent right, candidate wrong
    candidate_wins: int  # candidate right, incumbent wrong
    p_worse: float
    alpha: float
    meets_target: bool
    not_worse: bool

    @property
    def passed(self) -> bool:
        return self.meets_target and self.not_worse

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def decide(suite: str, incumbent: list[Result], candidate: list[Result], target: float, target_source: str,
           alpha: float = 0.05) -> SuiteDecision:
    inc = {r.example_id: r for r in incumbent}
    cand = {r.example_id: r for r in candidate}
    ids = sorted(i for i in inc.keys() & cand.keys() if inc[i].scored and cand[i].scored)  # errors say nothing
    if not ids:
        raise ConfigError(f"suite {suite}: no example was scored for both models; rerun the evals (errors and "
                          "timeouts are tried again)")
    c_fail = sum(cand[i].failed for i in ids)
    i_fail = sum(inc[i].failed for i in ids)
    inc_wins = sum(cand[i].failed and not inc[i].failed for i in ids)
    cand_wins = sum(inc[i].failed and not cand[i].failed for i in ids)
    c_upper = Rate(c_fail, len(ids)).interval[1]
    p = mcnemar_exact_worse(inc_wins, cand_wins)
    return SuiteDecision(suite=suite, paired_n=len(ids), target=target, target_source=target_source,
                         candidate_failures=c_fail, candidate_upper=c_upper, incumbent_failures=i_fail,
                         incumbent_upper=Rate(i_fail, len(ids)).interval[1], incumbent_wins=inc_wins,
                         candidate_wins=cand_wins, p_worse=p, alpha=alpha, meets_target=c_upper <= target,
                         not_worse=p >= alpha)


def format_decisions(decisions: list[SuiteDecision], candidate: str, incumbent: str) -> str:
    head = (f"{'suite':<16} {'n':>4}  {'candidate fail [CI upper]':>26}  {'incumbent fail':>14}  {'target':>8}  "
            f"{'inc wins/cand wins':>18}  {'p(worse)':>8}  verdict")
    lines = [f"candidate: {candidate}   incumbent: {incumbent}", head, "-" * len(head)]
    for d in decisions:
        why = []
        if not d.meets_target:
            why.append(f"upper bound {d.candidate_upper:.1%} > target {d.target:.1%} ({d.target_source})")
        if not d.not_worse:
            why.append(f"significantly worse than incumbent (p={d.p_worse:.3g} < {d.alpha})")
        verdict = "PASS" if d.passed else "FAIL: " + "; ".join(why)
        lines.append(f"{d.suite:<16} {d.paired_n:>4}  {d.candidate_failures / d.paired_n:>14.1%} [{d.candidate_upper:>7.1%}]"
                     f"  {d.incumbent_failures / d.paired_n:>14.1%}  {d.target:>8.1%}  "
                     f"{f'{d.incumbent_wins}/{d.candidate_wins}':>18}  {d.p_worse:>8.3g}  {verdict}")
    return "\n".join(lines)


def write_candidate(profile: str | Path, tier: int, candidate: str) -> tuple[Path, Path]:
    """Put `candidate` on `tier` in the profile YAML, keeping comments; the old file is kept as <file>.bak."""
    path = profile_path(profile)
    _, before = load_profile(path)
    old = before.tiers[tier].model
    text = path.read_text(encoding="utf-8")
    backup = path.with_name(path.name + ".bak")
    shutil.copy2(path, backup)
    new_text = _replace_model(text, tier, old, candidate)
    path.write_text(new_text, encoding="utf-8")
    try:
        _, after = load_profile(path)
        if after.tiers[tier].model != candidate:
            raise ConfigError(f"{path}: tiers.{tier}.model is still {after.tiers[tier].model!r} after the edit")
    except ConfigError:
        shutil.copy2(backup, path)
        raise
    return path, backup


def _replace_model(text: str, tier: int, old: str, new: str) -> str:
    lines = text.splitlines(keepends=True)
    in_tiers, tier_indent = False, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if re.match(r"^tiers\s*:", line):
            in_tiers = True
            continue
        if not in_tiers or not stripped or stripped.startswith("#"):
            continue
        if indent == 0:
            break
        head = re.match(rf"^\s*['\"]?{tier}['\"]?\s*:(.*)$", line)
        if tier_indent is None and head:
            if "{" in head.group(1):  # flow style: 3: {runner: ..., model: x}
                lines[i] = re.sub(rf"(\bmodel\s*:\s*)['\"]?{re.escape(old)}['\"]?", rf"\g<1>{new}", line, count=1)
                return "".join(lines)
            tier_indent = indent
            continue
        if tier_indent is not None:
            if indent <= tier_indent:
                break
            if re.match(rf"^\s*model\s*:\s*['\"]?{re.escape(old)}['\"]?\s*(#.*)?$", line):
                lines[i] = re.sub(rf"(model\s*:\s*)['\"]?{re.escape(old)}['\"]?", rf"\g<1>{new}", line, count=1)
                return "".join(lines)
    raise ConfigError(f"could not find tiers.{tier}.model: {old} in the profile text; edit it by hand")
