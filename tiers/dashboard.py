"""The live dashboard: one self-contained HTML page (no external assets) that reloads itself.

Per feature: volume, spend share, the failure rate with its interval from feedback and from the shadow,
cache hit rate, escalations, budget use, flags and the tier recommendation; below, the article's "tell"
(failure rate against business value, spend share against value share), drawn by tiers/audit_report.py
when matplotlib (the `reports` extra) is installed.
"""

from __future__ import annotations

import datetime as dt
import html
import importlib.util

from tiers.audit import Audit, AuditRow
from tiers.recommend import Recommendation
from tiers.routing import RoutingTable

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 1em 0 2em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; font-size: 13px; text-align: left; }
th { background: #f3f3f3; }
.flag { background: #c0392b; color: white; padding: 1px 5px; border-radius: 3px; font-size: 11px; }
.move { color: #1a7f37; font-weight: bold; }
.muted { color: #777; }
.plots { display: flex; flex-wrap: wrap; gap: 2em; }
.bar { display: inline-block; height: 8px; background: #2c7fb8; vertical-align: middle; }
.over { background: #c0392b; }
"""


def _cell(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>"


def _budget(row: AuditRow, table: RoutingTable) -> str:
    budget = table.features[row.feature].budget if row.feature in table.features else None
    if budget is None or row.budget_spent_usd is None:
        return "<td>-</td>"
    share = row.budget_spent_usd / budget.usd
    bar = f'<span class="bar{" over" if share >= 1 else ""}" style="width:{min(share, 1) * 60:.0f}px"></span>'
    return (f"<td>{bar} {share:.0%} of ${budget.usd:g}/{budget.period}"
            f" <span class=\"muted\">(${row.budget_spent_usd:.4f})</span></td>")


def _feature_rows(audit: Audit, table: RoutingTable, recs: dict[str, Recommendation]) -> str:
    by_feature: dict[str, tuple[int, int]] = {}
    for g in audit.groups:
        hits, escalations = by_feature.get(g.feature, (0, 0))
        by_feature[g.feature] = (hits + g.cache_hits, escalations + g.escalations)
    body = []
    for r in audit.rows:
        hits, escalations = by_feature.get(r.feature, (0, 0))
        shadow = (f"{r.shadow.rate} (tier {r.shadow.shadow_tier}, ${r.shadow.spend_usd:.4f})" if r.shadow else "-")
        flags = " ".join(f'<span class="flag">{html.escape(f)}</span>' for f in r.flags) or "-"
        rec = recs.get(r.feature)
        rec_cell = (_cell(rec.text, "move" if rec.verdict == "move" else "muted") if rec else "<td>-</td>")
        body.append("<tr>" + "".join([
            _cell(r.feature), _cell(f"{r.value} / tier {r.declared_tier}"), _cell(r.serving), _cell(str(r.requests)),
            _cell(f"{r.spend_share:.1%}"), _cell(str(r.rate)), _cell(shadow),
            _cell(f"{hits / r.requests:.0%}" if r.requests else "-"), _cell(str(escalations)), _budget(r, table),
            f"<td>{flags}</td>", rec_cell]) + "</tr>")
    return "".join(body)


def _plots(audit: Audit) -> str:
    if importlib.util.find_spec("matplotlib") is None:
        return ('<p class="muted">The tell plot needs matplotlib: pip install '
                "'value-tier-runner[reports]'.</p>")
    from tiers.audit_report import tell_plots

    failure_svg, share_svg = tell_plots(audit)
    return f'<div class="plots"><div id="failure-plot">{failure_svg}</div><div id="share-plot">{share_svg}</div></div>'


def render_dashboard(audit: Audit, table: RoutingTable, recs: list[Recommendation], refresh_s: int) -> str:
    window = " to ".join(dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                         for t in (audit.since, audit.until))
    header = "".join(f"<th>{h}</th>" for h in (
        "feature", "value / declared tier", "serving", "requests", "spend share", "failure rate [95% CI] (feedback)",
        "failure rate [95% CI] (shadow)", "cache hits", "escalations", "budget use", "flags", "recommendation"))
    shadow_spend = sum(r.shadow.spend_usd for r in audit.rows if r.shadow)
    total = sum(r.spend_usd for r in audit.rows)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh_s}">
<title>tier-runner dashboard</title><style>{STYLE}</style></head><body>
<h1>Features, tiers and what they cost</h1>
<p>Window: {html.escape(window)}. This page reloads itself every {refresh_s} s. Spend ${total:.4f} on answers;
shadow calls ${shadow_spend:.4f} more, shown apart and never charged to a budget.</p>
<table id="features"><tr>{header}</tr>{_feature_rows(audit, table, {r.feature: r for r in recs})}</table>
<h2>The tell: failure rate against value</h2>
{_plots(audit)}
</body></html>
"""
