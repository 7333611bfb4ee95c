"""The audit as one self-contained HTML file, drawing the article's "tell" with matplotlib (inline SVG)."""

from __future__ import annotations

import datetime as dt
import html
import io

from tiers.audit import Audit

VALUE_ORDER = ["internal", "retention", "revenue", "risk"]


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    return buffer.getvalue()[buffer.getvalue().index("<svg"):]


def tell_plots(audit: Audit) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in audit.rows if r.requests]
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        x = VALUE_ORDER.index(r.value)
        low, high = r.rate.interval
        colour = "#c0392b" if "INVERTED" in r.flags else "#2c7fb8"
        ax.errorbar(x, r.rate.value, yerr=[[r.rate.value - low], [high - r.rate.value]], fmt="o", color=colour,
                    capsize=4)
        ax.annotate(f"{r.feature} (tier {r.serving.split(':')[0]})", (x, r.rate.value), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xticks(range(len(VALUE_ORDER)), VALUE_ORDER)
    ax.set_xlabel("business value of the feature")
    ax.set_ylabel("failure rate (95% Wilson interval)")
    ax.set_title("Failure rate per feature against its value")
    failure_svg = _svg(fig)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.scatter(r.value_share, r.spend_share, color="#c0392b" if r.flags else "#2c7fb8")
        ax.annotate(r.feature, (r.value_share, r.spend_share), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("value share (requests x failure cost)")
    ax.set_ylabel("spend share")
    ax.set_title("Cost share against value share")
    share_svg = _svg(fig)
    plt.close(fig)
    return failure_svg, share_svg


def render_html(audit: Audit) -> str:
    failure_svg, share_svg = tell_plots(audit)
    window = " to ".join(dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
                         for t in (audit.since, audit.until))
    header = ("<tr><th>feature</th><th>value</th><th>owner</th><th>declared tier</th><th>serving</th>"
              "<th>requests</th><th>spend share</th><th>failure rate [95% CI]</th><th>cost per success</th>"
              "<th>flags</th></tr>")
    body = []
    for r in audit.rows:
        eff = f"${r.effective_cost_per_success:.6f}" if r.effective_cost_per_success is not None else "n/a"
        flags = " ".join(f'<span class="flag">{f}</span>' for f in r.flags) or "-"
        cells = [r.feature, r.value, r.owner, str(r.declared_tier), r.serving, str(r.requests), f"{r.spend_share:.1%}",
                 str(r.rate), eff]
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + f"<td>{flags}</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Feature audit</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; font-size: 14px; }}
.flag {{ background: #c0392b; color: white; padding: 1px 5px; border-radius: 3px; font-size: 12px; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 2em; }}
</style></head><body>
<h1>Feature audit</h1>
<p>Window: {html.escape(window)}. In a corrected budget, high-value features have low failure rates on
appropriate tiers, and spend follows value.</p>
<table id="audit">{header}{''.join(body)}</table>
<div class="plots"><div id="failure-plot">{failure_svg}</div><div id="share-plot">{share_svg}</div></div>
</body></html>
"""
