"""`tier-runner calibrate`: fit a feature's gate threshold on a labelled suite, check it on held-out examples,
and write it into the routing table (registered through the `tier_runner.commands` entry points)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from evals.calibrate import SIGNALS


@click.command("calibrate")
@click.option("--feature", "feature_name", required=True, help="the routing table's feature whose gate is fitted")
@click.option("--suite", "suite_name", required=True, help="labelled suite (name or YAML path) standing for the feature")
@click.option("--target-failure", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05,
              show_default=True, help="highest failure rate of the accepted answers (the 95% Clopper-Pearson upper bound)")
@click.option("--signal", type=click.Choice(["auto", *SIGNALS]), default="auto", show_default=True,
              help="which gate to fit; auto: the one that accepts the most answers")
@click.option("--consistency-k", type=click.IntRange(0, 16), default=5, show_default=True,
              help="samples per example for the agreement signal (consistency gate); 0 skips it")
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=0.5, show_default=True,
              help="share of the suite's examples left out of the fit, to check the threshold on")
@click.option("--limit", type=int, default=None, help="at most this many examples (default: the suite's n)")
@click.option("--routing", type=click.Path(path_type=Path), default=None,
              help="routing table to read and edit (default: the shipped one)")
@click.option("--profile", default="workstation", show_default=True,
              help="hardware profile whose tier serves the feature (a one-tier gateway is started on it)")
@click.option("--url", default=None, help="a running gateway to ask instead (tier:<feature's tier>)")
@click.option("--concurrency", type=int, default=2, show_default=True, help="requests in flight at once")
@click.option("--store", "store_path", type=click.Path(path_type=Path), default=None,
              help="results database (default: evals.db in the data cache); examples done before are reused")
@click.option("--dry-run", is_flag=True, help="print the curve (acceptance against failure bound); write nothing")
def calibrate_command(feature_name, suite_name, target_failure, signal, consistency_k, holdout, limit, routing,
                      profile, url, concurrency, store_path, dry_run):
    """Fit FEATURE's gate threshold so that accepted answers stay under --target-failure; write it to the table."""
    from evals.calibrate import (curve, describe, evaluate, format_curve, gate_update, held_out_verdict, pick,
                                 written_threshold)
    from evals.gate_signals import collect
    from evals.gateway_proc import GatewayProcess, single_tier_profile
    from evals.harness import resolve_target
    from evals.routing_edit import write_gate
    from evals.store import ResultStore
    from evals.suite import load_suite
    from tiers.routing import DEFAULT_ROUTING, load_routing

    routing = routing or DEFAULT_ROUTING
    table = load_routing(routing)
    if feature_name not in table.features:
        raise click.UsageError(f"feature {feature_name!r} is not in {routing}; it has {', '.join(table.features)}")
    feature = table.features[feature_name]
    suite = load_suite(suite_name)
    samples = suite.samples(limit)
    fit_n = len(samples) - round(len(samples) * holdout)
    if fit_n < 10:
        raise click.UsageError(f"{fit_n} examples to fit on is too few; raise --limit or lower --holdout")
    store = ResultStore(store_path)
    k = consistency_k if signal in ("auto", "agreement") else 0
    if signal == "agreement" and not k:
        raise click.UsageError("--signal agreement needs --consistency-k > 0")

    def measure(base_url: str):
        target = resolve_target(base_url, f"tier:{feature.tier}", label=f"{feature_name} on tier {feature.tier}")
        return collect(target, suite, feature_name, feature, samples, store, k=k, concurrency=concurrency)

    if url:
        signals, errors = measure(url)
    else:
        with GatewayProcess(single_tier_profile(profile, feature.tier), routing) as gw:
            signals, errors = measure(gw.base_url)
    by_id = {s.example_id: s for s in signals}
    fit = [by_id[s.id] for s in samples[:fit_n] if s.id in by_id]
    held = [by_id[s.id] for s in samples[fit_n:] if s.id in by_id]

    names = [signal] if signal != "auto" else [n for n in SIGNALS if n != "agreement" or k]
    curves = {n: curve(fit, n) for n in names}
    chosen = {n: pick(curves[n], target_failure) for n in names}
    if dry_run:
        for n in names:
            click.echo(format_curve(curves[n], n, chosen[n], target_failure) + "\n")
    best = max(names, key=lambda n: chosen[n].accepted if chosen[n] else -1)
    summary = {"feature": feature_name, "suite": suite.name, "tier": feature.tier, "target_failure": target_failure,
               "signal": best, "examples": len(samples), "errors": errors, "written": False}
    if chosen[best] is None:
        click.echo(f"no threshold of {', '.join(names)} keeps the failure bound of the accepted answers at or under "
                   f"{target_failure:.1%} on {len(fit)} examples: every answer would escalate. Nothing was written; "
                   f"raise --target-failure or improve the tier.", err=True)
        click.echo(json.dumps({**summary, "threshold": None}), err=True)
        sys.exit(1)
    threshold = written_threshold(curves[best], chosen[best], best)
    checked = evaluate(held, best, threshold)
    fitted = chosen[best]
    click.echo(f"{feature_name} (tier {feature.tier}) on {suite.name}: {best} >= {threshold:.6g}")
    click.echo("  " + describe(fitted, f"fit ({len(fit)} examples)"))
    if held:
        click.echo("  " + describe(checked, f"held out ({len(held)} examples)") +
                   f"; {held_out_verdict(checked, fitted.interval[1])}")
    if errors:
        click.echo(f"  {errors} example(s) ended in an error and were left out; rerun to try them again", err=True)
    update = gate_update(best, threshold, k)
    summary.update(threshold=threshold, gate=update, fit=_point(fitted), holdout=_point(checked) if held else None)
    if not dry_run:
        backup = write_gate(routing, feature_name, update)
        summary.update(written=True, backup=str(backup))
        click.echo(f"wrote features.{feature_name}.gate in {routing} (previous file: {backup}); a gateway serving "
                   f"this table picks it up by itself")
    click.echo(json.dumps(summary), err=True)


def _point(p) -> dict:
    low, high = p.interval
    return {"n": p.n, "accepted": p.accepted, "failures": p.failures, "escalation_share": p.escalation,
            "failure_rate": p.failure_rate, "failure_low": low, "failure_high": high}
