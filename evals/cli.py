"""`tier-runner eval` and `tier-runner promote` (registered through the `tier_runner.commands` entry points)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from hardware.errors import ConfigError
from hardware.extras import require_extra

SUITES_HELP = "suite names or YAML paths, comma-separated; 'all' for every shipped suite"


def _suites(spec: str, report_html: Path | None):
    """The suites, after checking that the optional packages they and the reports need are installed: a run
    must not stop at its end for a missing extra."""
    from evals.suite import ArchiveSource, FileSource, load_suite, shipped_suites

    names = shipped_suites() if spec == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    suites = [load_suite(n) for n in names]
    for suite in suites:
        if isinstance(suite.source, ArchiveSource) and suite.source.format == "hf_arrow":
            require_extra("pyarrow", "evals", f"suite {suite.name} (its data is in Arrow format)")
        if isinstance(suite.source, FileSource) and suite.source.file_format() == "parquet":
            require_extra("pyarrow", "evals", f"suite {suite.name} (its data is in Parquet format)")
    if report_html:
        require_extra("matplotlib", "reports", "--report-html")
    return suites


def _failure_costs(routing: Path | None) -> dict[str, float]:
    from tiers.routing import DEFAULT_ROUTING, load_routing

    table = load_routing(routing or DEFAULT_ROUTING)
    return {name: f.failure_cost_usd for name, f in table.features.items()}


def _evaluate(suites, base_url: str, route_for, store, concurrency: int, limit: int | None, label: str | None):
    """Run every suite on one gateway; returns [(suite, target)] for the report."""
    from evals.harness import resolve_target, run_suite

    done = []
    for suite in suites:
        route = route_for(suite)
        target = resolve_target(base_url, route, suite.tier, label and f"{label} ({route})")
        summary = run_suite(suite, target, store, concurrency=concurrency, limit=limit)
        click.echo(json.dumps(summary.model_dump()), err=True)
        if summary.status != "success":
            raise click.ClickException(f"{suite.name}: {summary.error}")
        done.append((suite, target))
    return done


def _write_reports(store, pairs, limit, routing, md: Path | None, html_out: Path | None, title: str,
                   extra_html: str = "") -> str:
    from evals.report import render_html, render_markdown, summarize

    costs = _failure_costs(routing)
    summaries = []
    for suite, target in pairs:
        ids = [s.id for s in suite.samples(limit)]
        results = store.results(suite.name, target.config_hash(suite), ids)
        summaries.append(summarize(suite.name, target.label, results, costs.get(suite.feature, 0.0)))
    text = render_markdown(summaries, title)
    if md:
        md.write_text(text, encoding="utf-8")
    if html_out:
        html_out.write_text(render_html(summaries, title, extra_html), encoding="utf-8")
    return text


common = [
    click.option("--suites", "suite_spec", default="all", show_default=True, help=SUITES_HELP),
    click.option("--limit", type=int, default=None, help="at most this many examples per suite (default: the suite's n)"),
    click.option("--concurrency", type=int, default=2, show_default=True, help="requests in flight at once"),
    click.option("--store", "store_path", type=click.Path(path_type=Path), default=None,
                 help="results database (default: evals.db in the data cache)"),
    click.option("--routing", type=click.Path(path_type=Path), default=None, help="routing table (default: shipped)"),
    click.option("--report-md", type=click.Path(path_type=Path), default=None, help="write the Markdown report here"),
    click.option("--report-html", type=click.Path(path_type=Path), default=None, help="write the HTML report here"),
]


def with_common(fn):
    for option in reversed(common):
        fn = option(fn)
    return fn


@click.command("eval")
@with_common
@click.option("--profile", default="cpu-tier3", show_default=True,
              help="hardware profile (name or YAML path) whose tier placement each --model gateway uses; a tier it "
                   "lacks borrows tier 3's")
@click.option("--url", default=None, help="a running gateway; default: start one per --model")
@click.option("--via", type=click.Choice(["tier", "feature"]), default="tier", show_default=True,
              help="tier:<suite tier> directly, or feature:<suite feature> through routing, gates and cache")
@click.option("--tier", type=int, default=None, help="with --model: the tier the model is put on (default: the suite's)")
@click.option("--model", "models", multiple=True, help="a catalog model to evaluate on a temporary gateway (repeatable)")
def eval_command(suite_spec, limit, concurrency, store_path, profile, routing, report_md, report_html, url, via, tier,
                 models):
    """Measure failure rates on real labelled data, per suite and model; resumable (only missing examples run)."""
    from evals.gateway_proc import GatewayProcess, single_tier_profile
    from evals.store import ResultStore

    suites = _suites(suite_spec, report_html)
    store = ResultStore(store_path)

    def route_for(suite):
        return f"feature:{suite.feature}" if via == "feature" else f"tier:{tier or suite.tier}"

    pairs = []
    if url:
        pairs += _evaluate(suites, url, route_for, store, concurrency, limit, None)
    for model in models:
        by_tier: dict[int, list] = {}
        for suite in suites:
            by_tier.setdefault(tier or suite.tier, []).append(suite)
        for n, group in sorted(by_tier.items()):
            # the suite's tier slot of the profile with this model on it; a tier the profile lacks borrows tier 3's
            base_tier = n if _has_tier(profile, n) else 3
            spec = single_tier_profile(profile, base_tier, model)
            if base_tier != n:
                spec["tiers"] = {n: spec["tiers"][base_tier]}
            with GatewayProcess(spec, routing) as gw:
                pairs += _evaluate(group, gw.base_url, lambda s, n=n: f"tier:{n}" if via == "tier" else f"feature:{s.feature}",
                                   store, concurrency, limit, model)
    if not url and not models:
        raise click.UsageError("give --url (a running gateway) or --model (one or more catalog models)")
    click.echo(_write_reports(store, pairs, limit, routing, report_md, report_html, "Eval results"))


def _has_tier(profile: str, n: int) -> bool:
    from hardware.profile import load_profile

    return n in load_profile(profile)[1].tiers


@click.command("promote")
@with_common
@click.option("--profile", default="workstation", show_default=True,
              help="hardware profile (name or YAML path) to promote onto: the one you serve; it is edited in place")
@click.option("--tier", type=click.IntRange(1, 3), required=True, help="the tier whose model would be replaced")
@click.option("--candidate", required=True, help="catalog model to promote onto the tier")
@click.option("--incumbent-url", default=None, help="evaluate the incumbent on this running gateway instead")
@click.option("--target", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="failure-rate target (default: the suite's failure_target, else the routing table's for the tier)")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="significance of the paired test")
@click.option("--dry-run", is_flag=True, help="only report; never write the profile")
def promote_command(suite_spec, limit, concurrency, store_path, profile, routing, report_md, report_html, tier,
                    candidate, incumbent_url, target, alpha, dry_run):
    """Promote CANDIDATE onto --tier only if it meets the tier's failure target and is not worse than the incumbent."""
    from evals.gateway_proc import GatewayProcess, single_tier_profile
    from evals.promote import decide, format_decisions, write_candidate
    from evals.store import ResultStore
    from hardware.catalog import load_catalog
    from hardware.profile import load_profile
    from tiers.routing import DEFAULT_ROUTING, load_routing

    suites = _suites(suite_spec, report_html)
    store = ResultStore(store_path)
    table = load_routing(routing or DEFAULT_ROUTING)
    profile_file, current = load_profile(profile)
    if tier not in current.tiers:
        raise ConfigError(f"{profile_file}: has no tiers.{tier} to promote onto")
    incumbent = current.tiers[tier].model
    if current.tiers[tier].runner != "hosted":
        load_catalog().entry(candidate)  # an unknown model is named before anything starts
    if candidate == incumbent:
        raise click.UsageError(f"{candidate} already serves tier {tier}")
    route = lambda s: f"tier:{tier}"  # noqa: E731

    if incumbent_url:
        inc_pairs = _evaluate(suites, incumbent_url, route, store, concurrency, limit, incumbent)
    else:
        with GatewayProcess(single_tier_profile(profile, tier), routing) as gw:
            inc_pairs = _evaluate(suites, gw.base_url, route, store, concurrency, limit, incumbent)
    with GatewayProcess(single_tier_profile(profile, tier, candidate), routing) as gw:
        cand_pairs = _evaluate(suites, gw.base_url, route, store, concurrency, limit, candidate)

    decisions = []
    for (suite, inc_target), (_, cand_target) in zip(inc_pairs, cand_pairs):
        ids = [s.id for s in suite.samples(limit)]
        if target is not None:
            goal, source = target, "--target"
        elif suite.failure_target is not None:
            goal, source = suite.failure_target, f"suite {suite.name} failure_target"
        else:
            goal, source = table.failure_targets[tier], f"routing failure_targets[{tier}]"
        decisions.append(decide(suite.name, store.results(suite.name, inc_target.config_hash(suite), ids),
                                store.results(suite.name, cand_target.config_hash(suite), ids), goal, source, alpha))
    passed = all(d.passed for d in decisions)
    table_text = format_decisions(decisions, candidate, incumbent)
    click.echo(table_text)
    _write_reports(store, inc_pairs + cand_pairs, limit, routing, report_md, report_html,
                   f"Promotion: {candidate} onto tier {tier} (incumbent {incumbent})",
                   f"<pre id=\"decision\">{_escape(table_text)}</pre>")
    applied = passed and not dry_run
    details = {"profile": str(profile_file), "suites": [d.as_dict() for d in decisions], "limit": limit,
               "alpha": alpha, "test": "exact one-sided McNemar (binomial on discordant pairs)"}
    if applied:
        path, backup = write_candidate(profile_file, tier, candidate)
        details["backup"] = str(backup)
    decision_id = store.record_decision(tier, candidate, incumbent, passed, dry_run, applied, details)
    if not passed:
        click.echo(f"promotion FAILED (decision #{decision_id}); the profile is unchanged", err=True)
        sys.exit(1)
    if dry_run:
        click.echo(f"promotion would pass (decision #{decision_id}); --dry-run: the profile is unchanged", err=True)
        return
    click.echo(f"promoted {candidate} onto tier {tier} in {profile_file} (previous file: {details['backup']}; "
               f"decision #{decision_id}). A gateway serving this profile swaps tier {tier} to it once the new "
               f"runner is ready (it watches the file; POST /admin/reload does it at once); until then the old "
               f"model serves. GET /ready shows which model tier {tier} serves.", err=True)


def _escape(text: str) -> str:
    import html

    return html.escape(text)
