"""`make demo`: the budget inversion trap in a few minutes, offline, on the `demo` profile.

A seeded sample of the shipped suites' labelled rows goes through the shipped features the way an
application would send it (the raw review or utterance; the feature adds its instructions and output
contract), with some requests repeated as production traffic repeats them. Each answer is judged by its
suite's scorer against the gold label and that judgement is posted as feedback. The gateway is then
stopped (its ledger flushed), and the audit is read from the ledger rows it wrote: the table, the HTML
report, and one line on which feature to move and why. Nothing here picks the outcome: the flags are
the audit's, from the models' real answers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import httpx
import yaml

from evals.gateway_proc import GatewayProcess
from evals.suite import Sample, load_suite
from hardware.profile import profile_path
from tiers.routing import DEFAULT_ROUTING, RoutingTable, load_routing


@dataclass(frozen=True)
class Part:
    suite: str
    feature: str
    field: str  # the record field an application would send
    full: int  # requests in the full replay
    ci: int  # under CI=true


MIX = (
    Part("sst2-sentiment", "review-sentiment", "sentence", 40, 28),
    Part("snips-intent", "intent-detection", "utterance", 30, 20),
    Part("snips-json", "field-extraction", "utterance", 12, 6),
)
REPEAT_SHARE = 0.2  # of the sentiment and intent requests, sent again later (same text, as users repeat)
SEED = 19


@dataclass(frozen=True)
class Item:
    part: Part
    sample: Sample
    repeat: bool = False


def build_mix(small: bool) -> list[Item]:
    """The scripted mix: each part's first rows of its suite's seeded sample, shuffled, with repeats placed
    after the request they repeat."""
    rng = random.Random(SEED)
    items = [Item(p, s) for p in MIX for s in load_suite(p.suite).samples(p.ci if small else p.full)]
    rng.shuffle(items)
    cacheable = [i for i in items if i.part.feature != "field-extraction"]
    for original in rng.sample(cacheable, round(len(cacheable) * REPEAT_SHARE)):
        at = rng.randint(items.index(original) + 1, len(items))
        items.insert(at, Item(original.part, original.sample, repeat=True))
    return items


def _send(client: httpx.Client, item: Item, scorers: dict) -> dict:
    body = {"model": f"feature:{item.part.feature}",
            "messages": [{"role": "user", "content": item.sample.fields[item.part.field]}]}
    response = client.post("/v1/chat/completions", json=body)
    sent = {"feature": item.part.feature, "status": response.status_code, "repeat": item.repeat,
            "request_id": response.headers.get("x-request-id"), "cache": response.headers.get("x-cache"),
            "tier": response.headers.get("x-tier"), "escalated": response.headers.get("x-escalated") == "true"}
    if response.status_code != 200:
        return {**sent, "verdict": "error"}
    answer = response.json()["choices"][0]["message"]["content"] or ""
    verdict = scorers[item.part.suite].score(answer, item.sample.target).verdict
    gold = item.sample.target if isinstance(item.sample.target, str) else json.dumps(item.sample.target)
    outcome = {"outcome": "accepted"} if verdict == "correct" else {"outcome": "corrected", "note": gold}
    posted = client.post("/v1/feedback", json={"request_id": sent["request_id"], **outcome})
    posted.raise_for_status()
    return {**sent, "verdict": verdict, "answer": answer}


def replay(base_url: str, items: list[Item], concurrency: int = 2) -> list[dict]:
    from tqdm import tqdm

    scorers = {p.suite: load_suite(p.suite).build_scorer() for p in MIX}
    with httpx.Client(base_url=base_url, timeout=300) as client, ThreadPoolExecutor(concurrency) as pool, \
            tqdm(total=len(items), desc="replaying labelled requests", unit="req", dynamic_ncols=True) as bar:
        sent = []
        for done in pool.map(lambda item: _send(client, item, scorers), items):
            sent.append(done)
            bar.update(1)
    return sent


def reading(audit, table: RoutingTable) -> str:
    """One line: the flagged feature whose measured failures cost the most, where to move it, and why."""
    flagged = [r for r in audit.rows if {"INVERTED", "OVERSPEND"} & set(r.flags)]
    if not flagged:
        return "Reading: no feature is flagged; every measured failure rate is within its tier's target."
    cost = {name: spec.failure_cost_usd for name, spec in table.features.items()}
    row = max(flagged, key=lambda r: (r.rate.failures * cost[r.feature], r.rate.failures))
    tier = int(row.serving.split(":")[0]) if row.serving != "none" else row.declared_tier
    lost = row.rate.failures * cost[row.feature]
    if "OVERSPEND" in row.flags:
        return (f"Reading: move {row.feature} down from Tier 1 to Tier 2: it failed {row.rate.failures} of "
                f"{row.rate.n} ({row.rate.value:.0%}, at most {row.rate.interval[1]:.0%}), under Tier 2's {table.failure_targets[2]:.0%} target, and took "
                f"{row.spend_share:.0%} of the spend.")
    low, high = row.rate.interval
    measured = f"{row.rate.value:.0%}, 95% CI {low:.0%} to {high:.0%}"
    why = (f"it failed {row.rate.failures} of {row.rate.n} answers ({measured}), above Tier {tier}'s "
           f"{table.failure_targets[tier]:.0%} target" if row.rate.interval[0] > table.failure_targets[tier]
           else f"it is a {row.value} feature on the cheapest tier")
    return (f"Reading: move {row.feature} ({row.value}, owner {row.owner}) up from Tier {tier} to Tier "
            f"{max(1, tier - 1)}: {why}; at ${cost[row.feature]:g} a failure that is ${lost:,.2f} of rework "
            f"against ${row.spend_usd:.6f} of inference.")


def run(out: Path, small: bool, concurrency: int) -> dict:
    from sqlalchemy import create_engine

    from tiers.audit import format_table, run_audit
    from tiers.audit_report import render_html

    started = time.time()
    table = load_routing(DEFAULT_ROUTING)
    profile = yaml.safe_load(profile_path("demo").read_text(encoding="utf-8"))
    items = build_mix(small)
    click.echo(f"demo: {len(items)} requests ({sum(i.repeat for i in items)} repeats) from the shipped suites "
               f"through {', '.join(p.feature for p in MIX)}", err=True)
    click.echo(f"profile: {profile['description']}", err=True)
    click.echo("starting the gateway (three llama.cpp runners and the cache's embedder)...", err=True)
    gateway = GatewayProcess(profile, DEFAULT_ROUTING)
    with gateway:
        ready_s = time.time() - started
        sent = replay(gateway.base_url, items, concurrency)
    out.mkdir(parents=True, exist_ok=True)
    ledger = out / "ledger.db"
    shutil.copyfile(gateway.folder / "data" / "ledger.db", ledger)
    shutil.rmtree(gateway.folder, ignore_errors=True)

    engine = create_engine(f"sqlite:///{ledger.resolve()}")
    audit = run_audit(engine, table, since=started - 1)
    engine.dispose()
    report = out / "audit.html"
    report.write_text(render_html(audit), encoding="utf-8")
    line = reading(audit, table)
    hits = sum(s["cache"] == "hit" for s in sent)
    escalated = sum(s["escalated"] for s in sent)
    summary = {"requests": len(sent), "cache_hits": hits, "escalated": escalated,
               "errors": sum(s["status"] != 200 for s in sent), "gateway_ready_s": round(ready_s, 1),
               "wall_s": round(time.time() - started, 1), "ledger": str(ledger), "report": str(report),
               "reading": line, "audit": audit.as_dict(), "sent": sent}
    (out / "demo.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    click.echo("")
    click.echo(format_table(audit))
    click.echo("")
    click.echo(f"{len(sent)} requests in {summary['wall_s']:.0f} s (gateway ready after {ready_s:.0f} s): "
               f"{hits} cache hits, {escalated} escalated by a gate, {summary['errors']} errors; "
               f"feedback from the gold labels on every answer")
    click.echo(f"HTML report: {report.resolve()}")
    click.echo(line)
    return summary


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path(".data/demo"), show_default=True,
              help="where the ledger copy, demo.json and audit.html are written")
@click.option("--small/--full", default=None, help="the smaller replay (default: small when CI=true)")
@click.option("--concurrency", type=int, default=2, show_default=True, help="requests in flight at once")
def main(out: Path, small: bool | None, concurrency: int) -> None:
    """Replay labelled requests through the shipped features on the demo profile, then audit them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if small is None:
        small = os.environ.get("CI", "").lower() == "true"
    run(out, small, concurrency)


if __name__ == "__main__":
    sys.exit(main())
