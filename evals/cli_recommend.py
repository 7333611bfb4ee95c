"""`tier-runner recommend`: per feature and tier, failure and cost per success from the ledger, the shadow and the
eval store; a move only where the evidence separates the tiers. `--apply FEATURE` runs the promotion gate on the
feature's suites and, only on a pass, moves the feature in the routing table (keeping a `.bak`)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from evals.cli import SUITES_HELP


def eval_evidence(store, suites, profile_tiers: dict) -> dict:
    """(feature, tier) -> Evidence from stored results of each suite on the model that serves that tier now."""
    from tiers.ledger.stats import Rate
    from tiers.recommend import Evidence

    configs = store.configs()
    found: dict[tuple[str, int], list] = {}
    for suite in suites:
        for tier, placement in profile_tiers.items():
            best = None
            for digest, config in configs.items():
                if (config.get("suite") == suite.name and config.get("route") == f"tier:{tier}" and "calibrate" not in
                        config and config.get("model") == placement.model
                        and config.get("suite_fingerprint") == suite.fingerprint()):
                    scored = [r for r in store.results(suite.name, digest) if r.scored]
                    if scored and (best is None or len(scored) > best.n):
                        best = Rate(sum(r.failed for r in scored), len(scored))
            if best is not None:
                found.setdefault((suite.feature, tier), []).append(Evidence(f"eval:{suite.name}", best))
    return found


@click.command("recommend")
@click.option("--routing", type=click.Path(path_type=Path), default=None, help="routing table (default: shipped)")
@click.option("--profile", default="workstation", show_default=True,
              help="hardware profile you serve: its tiers, their prices and models")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".data"), show_default=True,
              envvar="TIER_RUNNER_DATA_DIR", help="where the gateway keeps its ledger")
@click.option("--ledger-url", default=None, envvar="TIER_RUNNER_LEDGER_URL", help="SQLAlchemy URL of the ledger")
@click.option("--window-hours", type=click.FloatRange(0, 24 * 366, min_open=True), default=24 * 7, show_default=True,
              help="how far back the ledger is read")
@click.option("--suites", "suite_spec", default="all", show_default=True, help=SUITES_HELP)
@click.option("--store", "store_path", type=click.Path(path_type=Path), default=None,
              help="results database (default: evals.db in the data cache)")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--apply", "apply_feature", default=None,
              help="run the promotion gate for this feature's recommended move, and on a pass edit the routing table")
@click.option("--url", default=None, help="with --apply: a running gateway serving both tiers")
@click.option("--limit", type=int, default=None, help="with --apply: at most this many examples per suite")
@click.option("--concurrency", type=int, default=2, show_default=True, help="with --apply: requests in flight")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="with --apply: significance of the paired test")
def recommend_command(routing, profile, data_dir, ledger_url, window_hours, suite_spec, store_path, fmt, apply_feature,
                      url, limit, concurrency, alpha):
    """Say which features to move to which tier, with the evidence; never applied without --apply and a passing gate."""
    from evals.cli import _suites
    from evals.store import ResultStore
    from hardware.profile import load_profile
    from tiers.ledger.store import make_engine
    from tiers.recommend import format_recommendations, recommendations
    from tiers.routing import DEFAULT_ROUTING, load_routing
    from tiers.settings import Settings

    routing = routing or DEFAULT_ROUTING
    table = load_routing(routing)
    profile_file, placements = load_profile(profile)
    suites = _suites(suite_spec, None)
    store = ResultStore(store_path)
    engine = make_engine(Settings(routing=routing, data_dir=data_dir, ledger_url=ledger_url).ledger_database_url())
    until = time.time()
    recs = recommendations(engine, table, {t: p.price for t, p in placements.tiers.items()},
                           until - window_hours * 3600, until, eval_evidence(store, suites, placements.tiers))
    if fmt == "json":
        click.echo(json.dumps({"applied": False, "recommendations": [r.as_dict() for r in recs]}, indent=2))
    else:
        click.echo(format_recommendations(recs))
    if apply_feature is None:
        return
    rec = next((r for r in recs if r.feature == apply_feature), None)
    if rec is None:
        raise click.UsageError(f"feature {apply_feature!r} is not in {routing}")
    if rec.verdict != "move":
        click.echo(f"nothing to apply: {rec.text}", err=True)
        sys.exit(1)
    mine = [s for s in suites if s.feature == apply_feature]
    if not mine:
        raise click.ClickException(f"no eval suite stands for {apply_feature} (a suite's `feature`), so the promotion "
                                   f"gate cannot run; write one (docs/evals.md) or move the feature by hand")
    passed = _gate_and_apply(rec, mine, table, routing, profile_file, store, url, limit, concurrency, alpha)
    sys.exit(0 if passed else 1)


def _gate_and_apply(rec, suites, table, routing, profile_file, store, url, limit, concurrency, alpha) -> bool:
    from evals.cli import _evaluate
    from evals.gateway_proc import GatewayProcess, single_tier_profile
    from evals.promote import decide, format_decisions
    from evals.routing_edit import write_tier

    old, new = rec.current_tier, rec.move_to
    runs = {}
    for tier in (old, new):
        route = lambda s, t=tier: f"tier:{t}"  # noqa: E731
        if url:
            runs[tier] = _evaluate(suites, url, route, store, concurrency, limit, None)
        else:
            with GatewayProcess(single_tier_profile(profile_file, tier), routing) as gw:
                runs[tier] = _evaluate(suites, gw.base_url, route, store, concurrency, limit, None)
    decisions = []
    for (suite, at_old), (_, at_new) in zip(runs[old], runs[new]):
        ids = [s.id for s in suite.samples(limit)]
        goal, source = ((suite.failure_target, f"suite {suite.name} failure_target") if suite.failure_target
                        else (table.failure_targets[new], f"routing failure_targets[{new}]"))
        decisions.append(decide(suite.name, store.results(suite.name, at_old.config_hash(suite), ids),
                                store.results(suite.name, at_new.config_hash(suite), ids), goal, source, alpha))
    passed = all(d.passed for d in decisions)
    click.echo(format_decisions(decisions, f"{rec.feature} on tier {new}", f"tier {old}"))
    details = {"feature": rec.feature, "from": old, "to": new, "recommendation": rec.as_dict(),
               "suites": [d.as_dict() for d in decisions], "routing": str(routing)}
    if passed:
        details["backup"] = str(write_tier(routing, rec.feature, new))
    decision_id = store.record_decision(new, f"feature:{rec.feature}", f"tier:{old}", passed, False, passed, details)
    if passed:
        click.echo(f"moved {rec.feature} from tier {old} to tier {new} in {routing} (previous file: {details['backup']};"
                   f" decision #{decision_id}); a gateway serving this table picks it up by itself", err=True)
    else:
        click.echo(f"the promotion gate FAILED (decision #{decision_id}); the routing table is unchanged", err=True)
    return passed
