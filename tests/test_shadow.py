"""Shadow scoring in process: the comparisons, the judge's rubric, a full queue that drops and counts, a failing
shadow tier that leaves an error row, and shadow rows kept out of the feature's spend and budget in the audit.

A fake shadow runner stands in where the test must hold a call open (a full queue); the ledger is the real SQLite
one. The same paths with real models and servers are tests/test_shadow_e2e.py."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from hardware.profile import Price
from runners.answer import Answer, Choice, Usage
from runners.errors import RunnerFailed
from runners.request import Message, Request, TextPart
from tiers.audit import run_audit
from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.store import Ledger
from tiers.routing import Route, RoutingTable
from tiers.shadow import ShadowScorer
from tiers.shadow_compare import RUBRIC, Shadow, agree, judge_request, judge_verdict

TABLE = RoutingTable.model_validate({"features": {
    "triage": {"tier": 3, "value": "retention", "owner": "support", "failure_cost_usd": 1,
               "budget": {"usd": 5, "period": "month"},
               "shadow": {"sample": 1.0, "tier": 1, "compare": "label", "queue": 2}},
}})


def test_comparisons():
    label = Shadow(sample=1, tier=1, compare="label")
    assert agree(label, '"Billing"', "billing.") is True and agree(label, "billing", "shipping") is False
    exact = Shadow(sample=1, tier=1, compare="exact")
    assert agree(exact, "a  b\n", "a b") is True and agree(exact, "A b", "a b") is False
    fields = Shadow(sample=1, tier=1, compare="json_fields", fields=["intent"])
    assert agree(fields, '{"intent": "Play_Music", "x": 1}', '{"intent": "play_music", "x": 2}') is True
    assert agree(fields, "not json", '{"intent": "play_music"}') is False  # our answer broken: a failure
    assert agree(fields, '{"intent": "a"}', "not json") is None  # the shadow's broken: nothing to say
    every = Shadow(sample=1, tier=1, compare="json_fields")
    assert agree(every, '{"a": 1, "b": 2}', '{"a": 1, "b": 3}') is False
    with pytest.raises(ValueError, match="fields is for compare: json_fields"):
        Shadow(sample=1, tier=1, compare="label", fields=["a"])


def test_the_judge_sees_the_rubric_the_request_and_the_answer():
    request = Request(messages=[Message(role="system", content=[TextPart(text="Route the ticket.")]),
                                Message(role="user", content=[TextPart(text="My card was charged twice")])])
    asked = judge_request(request, '"billing"')
    assert asked.messages[0].text() == RUBRIC
    assert "[user] My card was charged twice" in asked.messages[1].text() and '"billing"' in asked.messages[1].text()
    assert (asked.temperature, asked.max_tokens) == (0, 8)
    assert judge_verdict("PASS") is True and judge_verdict("Verdict: fail.") is False and judge_verdict("maybe") is None


class HeldRunner:
    """A shadow tier whose calls wait until released (or fail), to hold the queue full."""

    kind, model_name, tier = "fake", "strong-model", 1

    def __init__(self, fail: bool = False):
        self.release = asyncio.Event()
        self.calls = 0
        self.fail = fail

    def serving(self) -> bool:
        return True

    async def complete(self, request: Request) -> Answer:
        self.calls += 1
        await self.release.wait()
        if self.fail:
            raise RunnerFailed("the shadow tier broke")
        return Answer(model=self.model_name, choices=[Choice(text="billing")], usage=Usage(prompt_tokens=1000,
                                                                                          completion_tokens=10))


class FakeRunners:
    def __init__(self, runner):
        self.runner = runner

    def get(self, tier):
        return self.runner if tier == 1 else None

    def price(self, tier):
        return Price(input_per_m=10, output_per_m=30) if tier == 1 else Price()


def answered(i: int, text: str) -> tuple[Request, Answer, list[LedgerRow]]:
    request = Request(messages=[Message(role="user", content=[TextPart(text=f"ticket {i}")])])
    row = LedgerRow(attempt_id=new_attempt_id(), request_id=f"req-{i}", ts=time.time(), route="feature:triage",
                    feature="triage", declared_tier=3, serving_tier=3, model="small", cost_usd=0.0001)
    return request, Answer(model="small", choices=[Choice(text=text)]), [row]


async def test_a_full_queue_drops_and_counts_and_shadow_rows_stay_out_of_the_feature_s_spend(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", tmp_path / "spool")
    ledger.start()
    runner = HeldRunner()
    registry = CollectorRegistry()
    scorer = ShadowScorer(lambda: FakeRunners(runner), ledger, registry)
    route = Route(3, "triage", TABLE.features["triage"])
    for i in range(6):
        request, answer, rows = answered(i, "billing" if i % 2 else "shipping")
        ledger.record(rows)
        scorer.offer(route, request, answer, rows)  # returns at once: the client is never held
        await asyncio.sleep(0)
    # one call in flight, two waiting (queue: 2), three dropped
    assert runner.calls == 1 and scorer.queued("triage") == 2
    assert registry.get_sample_value("tier_shadow_samples_total", {"feature": "triage", "result": "dropped"}) == 3
    runner.release.set()
    for _ in range(100):
        await asyncio.sleep(0.02)
        if registry.get_sample_value("tier_shadow_samples_total", {"feature": "triage", "result": "agree"}):
            if scorer.queued("triage") == 0 and runner.calls == 3:
                break
    await scorer.stop()
    assert ledger.flush()
    audit = run_audit(ledger.engine, TABLE, since=time.time() - 60)
    ledger.close()
    row = audit.rows[0]
    assert row.requests == 6 and row.spend_usd == pytest.approx(0.0006)  # the answers only
    assert row.budget_spent_usd == pytest.approx(0.0006)
    assert row.shadow.calls == 3 and row.shadow.rate.n == 3 and row.shadow.shadow_tier == 1
    assert row.shadow.rate.failures == 2  # requests 0 and 2 answered "shipping", the shadow "billing"
    assert row.shadow.spend_usd == pytest.approx(3 * (1000 * 10 + 10 * 30) / 1e6)
    assert audit.as_dict()["features"][0]["shadow"]["compared"] == 3
    assert all(g.feature == "triage" for g in audit.groups)  # no shadow:<feature> group in the spend by tier


async def test_a_failing_shadow_tier_leaves_an_error_row_and_no_estimate(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", tmp_path / "spool")
    ledger.start()
    runner = HeldRunner(fail=True)
    runner.release.set()
    registry = CollectorRegistry()
    scorer = ShadowScorer(lambda: FakeRunners(runner), ledger, registry)
    request, answer, rows = answered(0, "billing")
    ledger.record(rows)
    scorer.offer(Route(3, "triage", TABLE.features["triage"]), request, answer, rows)
    for _ in range(100):
        await asyncio.sleep(0.02)
        if registry.get_sample_value("tier_shadow_samples_total", {"feature": "triage", "result": "error"}):
            break
    await scorer.stop()
    assert ledger.flush()
    with ledger.engine.connect() as conn:
        from sqlalchemy import text

        shadow = conn.execute(text("SELECT * FROM attempts WHERE shadow_of = 'triage'")).mappings().one()
    ledger.close()
    assert shadow["error_type"] == "runner_failed" and shadow["shadow_agreed"] is None
    assert shadow["feature"] is None and shadow["client_key_id"] is None and shadow["route"] == "shadow:triage"
    assert shadow["request_id"] == "req-0" and shadow["parent_id"] == rows[0].attempt_id


def test_the_documented_rubric_is_the_shipped_one():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "decisions.md").read_text(encoding="utf-8")
    block = page.split("<!-- rubric -->\n```text\n", 1)[1].split("\n```", 1)[0]
    assert block == RUBRIC
