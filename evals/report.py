"""Per suite and model: failure rate with its 95% Wilson interval, the breakdown, latency, tokens and cost.

The rate is over scored examples (the model answered); errors and timeouts are counted apart, as "not
scored": they say nothing about the model and are retried by the next run.

Markdown for docs and terminals; one self-contained HTML file with matplotlib plots (inline SVG).
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass

from evals.store import NOT_SCORED, OUTCOMES, Result
from tiers.ledger.stats import Rate, effective_cost, percentile


@dataclass
class Summary:
    suite: str
    label: str
    tier: int | None
    model: str | None
    rate: Rate
    outcomes: dict[str, int]
    p50_ms: float | None
    p95_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    cost_per_success: float | None
    effective_cost_per_success: float | None  # (spend + failures x the feature's failure cost) / successes
    failure_cost_usd: float = 0.0

    def as_dict(self) -> dict:
        low, high = self.rate.interval
        return {"suite": self.suite, "label": self.label, "tier": self.tier, "model": self.model, "n": self.rate.n,
                "failures": self.rate.failures, "not_scored": sum(self.outcomes[k] for k in NOT_SCORED),
                "failure_rate": self.rate.value, "ci95": [low, high],
                "outcomes": self.outcomes, "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cost_usd": self.cost_usd, "cost_per_success": self.cost_per_success,
                "effective_cost_per_success": self.effective_cost_per_success}


def summarize(suite: str, label: str, results: list[Result], failure_cost_usd: float = 0.0) -> Summary:
    outcomes = {k: 0 for k in OUTCOMES}
    for r in results:
        outcomes[r.outcome] += 1
    failures = sum(r.failed for r in results)
    scored = sum(r.scored for r in results)
    successes = scored - failures
    latencies = [r.latency_ms for r in results if r.latency_ms is not None and r.scored]
    cost = sum(r.cost_usd for r in results)
    return Summary(
        suite=suite, label=label, tier=results[0].tier if results else None,
        model=results[0].model if results else None, rate=Rate(failures, scored), outcomes=outcomes,
        p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
        prompt_tokens=sum(r.prompt_tokens for r in results), completion_tokens=sum(r.completion_tokens for r in results),
        cost_usd=cost, cost_per_success=cost / successes if successes else None,
        effective_cost_per_success=effective_cost(cost, failures, successes, failure_cost_usd),
        failure_cost_usd=failure_cost_usd)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def _usd(v: float | None) -> str:
    return "n/a" if v is None else f"${v:.6f}"


COLUMNS = ["suite", "model (route)", "n scored", "failure rate [95% CI]", "wrong", "unparseable", "gate",
           "not scored: error", "not scored: timeout", "p50 ms", "p95 ms", "tokens in/out", "cost", "cost/success",
           "effective cost/success"]
FOOTNOTE = ("Failure rate = (wrong + unparseable + gate failure) / scored examples; intervals are 95% Wilson. "
            "Errors and timeouts are not answers: they are counted apart, left out of the rate, and retried by the "
            "next run.")


def _cells(s: Summary) -> list[str]:
    o = s.outcomes
    return [s.suite, s.label, str(s.rate.n), str(s.rate), str(o["wrong"]), str(o["unparseable"]),
            str(o["gate_failure"]), str(o["error"]), str(o["timeout"]), _ms(s.p50_ms), _ms(s.p95_ms),
            f"{s.prompt_tokens}/{s.completion_tokens}", _usd(s.cost_usd), _usd(s.cost_per_success),
            _usd(s.effective_cost_per_success) + (f" (failure ${s.failure_cost_usd:g})" if s.failure_cost_usd else "")]


def render_markdown(summaries: list[Summary], title: str = "Eval results") -> str:
    lines = [f"## {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(s)) + " |" for s in summaries]
    lines += ["", FOOTNOTE]
    return "\n".join(lines) + "\n"


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    return buffer.getvalue()[buffer.getvalue().index("<svg"):]


def _plots(summaries: list[Summary]) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    suites = sorted({s.suite for s in summaries})
    model = {id(s): s.model or s.label for s in summaries}  # one colour per model, whatever route it ran on
    labels = sorted(set(model.values()))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, label in enumerate(labels):
        shown = [x for x in summaries if model[id(x)] == label and x.rate.n]
        for s in shown:
            i = suites.index(s.suite)
            low, high = s.rate.interval
            ax.bar(i + j * width, s.rate.value, width, color=f"C{j}", label=label if s is shown[0] else None)
            ax.errorbar(i + j * width, s.rate.value, yerr=[[s.rate.value - low], [high - s.rate.value]], color="black",
                        capsize=3)
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(suites))], suites)
    ax.set_ylabel("failure rate (95% Wilson interval)")
    ax.set_ylim(0, 1.25)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Failure rate per suite and model")
    rate_svg = _svg(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4))
    bottom = {s: [0.0] * len(suites) for s in labels}
    kinds = [k for k in OUTCOMES if k not in ("correct", *NOT_SCORED)]
    for j, label in enumerate(labels):
        rows = {x.suite: x for x in summaries if model[id(x)] == label}
        for k, kind in enumerate(kinds):
            heights = [rows[s].outcomes[kind] / rows[s].rate.n if s in rows and rows[s].rate.n else 0 for s in suites]
            ax.bar([i + j * width for i in range(len(suites))], heights, width, bottom=bottom[label], color=f"C{k}",
                   label=kind if j == 0 else None, edgecolor="white")
            bottom[label] = [b + h for b, h in zip(bottom[label], heights)]
    ax.set_xticks([i + width * (len(labels) - 1) / 2 for i in range(len(suites))], suites)
    ax.set_ylabel("share of examples")
    ax.set_ylim(0, 1.25)
    ax.set_title("Failure breakdown (bars left to right: " + ", ".join(labels) + ")", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", ncol=3)
    breakdown_svg = _svg(fig)
    plt.close(fig)
    return rate_svg, breakdown_svg


def render_html(summaries: list[Summary], title: str = "Eval results", extra_html: str = "") -> str:
    rate_svg, breakdown_svg = _plots(summaries)
    header = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>"
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in _cells(s)) + "</tr>" for s in summaries)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 2em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(FOOTNOTE)}</p>
<table id="results">{header}{body}</table>
{extra_html}
<div class="plots"><div id="rate-plot">{rate_svg}</div><div id="breakdown-plot">{breakdown_svg}</div></div>
</body></html>
"""
