"""Shadow scoring with real models: a Tier 3 feature (SmolLM2) shadowed by a stronger local model (Qwen2.5-Coder-0.5B
behind its own gateway process, reached by the hosted runner as a stand-in Tier 1, as tests/test_cascade_e2e.py
does). After N answered requests, whole and streamed, the audit's shadow estimate has an interval that contains
the disagreement measured offline on the same prompts; the shadow's spend shows apart and is never charged to the
feature's budget; /metrics shows the estimate beside the feedback rate; the judge grades with its rubric; and with
the shadow tier killed every client request still gets its answer."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from evals.suite import load_suite
from tests.conftest import ServerProcess
from tests.ledger_reader import ledger_rows
from tiers.gates import normalize

N = 48
SYSTEM = "Classify the sentiment of the customer's review as positive or negative. Answer with one word."
FORMAT = {"type": "json_schema", "json_schema": {"name": "sentiment",
                                                 "schema": {"type": "string", "enum": ["negative", "positive"]}}}
ROUTING = f"""
features:
  sentiment:
    tier: 3
    value: retention
    owner: insights
    failure_cost_usd: 2
    request:
      system: "{SYSTEM}"
      max_tokens: 12
      temperature: 0
      response_format: {json.dumps({"type": "json_schema", "name": "sentiment",
                                    "schema": {"type": "string", "enum": ["negative", "positive"]}})}
    budget: {{usd: 50, period: month}}
    shadow: {{sample: 1.0, tier: 1, compare: label}}
  graded:
    tier: 3
    value: internal
    owner: insights
    failure_cost_usd: 1
    request: {{system: "{SYSTEM}", max_tokens: 12, temperature: 0}}
    shadow: {{sample: 1.0, tier: 1, compare: judge}}
"""


@pytest.fixture(scope="module")
def gateway(strong, tmp_path_factory):
    root = tmp_path_factory.mktemp("gateway")
    (root / "routing.yaml").write_text(ROUTING)
    (root / "profile.yaml").write_text(f"""
devices: {{cpu: {{kind: cpu}}}}
tiers:
  3: {{runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, max_batch: 2}}
  1: {{runner: hosted, model: "tier:3", base_url: "{strong.base_url}/v1", api_key_env: null, read_timeout_s: 120,
      price: {{input_per_m: 2.5, output_per_m: 10}}}}
""")
    proc = ServerProcess("--profile", str(root / "profile.yaml"), "--routing", str(root / "routing.yaml"),
                         log_path=root / "gateway.log")
    proc.wait_ready(timeout=300)
    yield proc
    proc.stop()


def reviews(n: int) -> list[str]:
    suite = load_suite("sst2-sentiment").model_copy(update={"n": n})
    return [s.fields["sentence"] for s in suite.samples()]


def ask(gateway, model: str, text: str, stream: bool = False, **body) -> tuple[int, str]:
    request = {"model": model, "messages": [{"role": "user", "content": text}], **body}
    if not stream:
        response = httpx.post(f"{gateway.base_url}/v1/chat/completions", json=request, timeout=180)
        return response.status_code, response.json()["choices"][0]["message"]["content"] if response.is_success else ""
    parts = []
    with httpx.stream("POST", f"{gateway.base_url}/v1/chat/completions", json={**request, "stream": True},
                      timeout=180) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"]
                parts += [c["delta"].get("content") or "" for c in delta]
        return response.status_code, "".join(parts)


def shadow_rows(gateway, feature: str) -> list[dict]:
    return [r for r in ledger_rows(gateway) if r["shadow_of"] == feature]


def wait_for_shadow(gateway, feature: str, count: int, timeout: float = 300) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = shadow_rows(gateway, feature)
        if len(rows) >= count:
            return rows
        time.sleep(1)
    raise AssertionError(f"only {len(shadow_rows(gateway, feature))} shadow rows of {count} after {timeout}s")


def test_the_shadow_estimate_contains_the_offline_disagreement(gateway):
    texts = reviews(N)
    for i, text in enumerate(texts):  # every fourth one streamed: both recording paths offer samples
        status, _ = ask(gateway, "feature:sentiment", text, stream=i % 4 == 3)
        assert status == 200
    rows = wait_for_shadow(gateway, "sentiment", N)
    assert all(r["feature"] is None and r["serving_tier"] == 1 and r["gate"] == "shadow:label" for r in rows)

    # offline: the same prompts, each tier asked directly, the labels compared
    disagree = 0
    for text in texts:
        labels = []
        for tier in ("tier:3", "tier:1"):
            status, answer = ask(gateway, tier, text, max_tokens=12, temperature=0, response_format=FORMAT,
                                 messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}])
            assert status == 200
            labels.append(normalize(answer))
        disagree += labels[0] != labels[1]
    offline = disagree / N

    audit = httpx.get(f"{gateway.base_url}/v1/audit", params={"window_hours": 1}, timeout=60).json()
    row = next(f for f in audit["features"] if f["feature"] == "sentiment")
    shadow = row["shadow"]
    assert shadow["compared"] == N and shadow["tier"] == 1 and shadow["estimates_tier"] == 3
    assert shadow["failure_rate_low"] <= offline <= shadow["failure_rate_high"], (shadow, offline)
    # spend apart: the answers were free (Tier 3 has no price), the shadow calls were not, and no budget paid them
    assert shadow["spend_usd"] > 0 and row["spend_usd"] == 0 and row["budget_spent_usd"] == 0
    assert row["requests"] == N

    deadline = time.monotonic() + 60  # /metrics: the estimate (refreshed in the background) beside feedback's
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{gateway.base_url}/metrics", timeout=30).text
        found = re.search(r'tier_failure_estimate\{feature="sentiment",source="shadow",stat="rate"\} (\S+)', metrics)
        if found and float(found.group(1)) == pytest.approx(shadow["failure_rate"]):
            break
        time.sleep(2)
    else:
        raise AssertionError("no shadow estimate on /metrics:\n" + metrics[-3000:])
    assert re.search(r'tier_failure_estimate\{feature="sentiment",source="feedback",stat="high"\}', metrics)
    cost = re.search(r'tier_shadow_cost_usd_total\{feature="sentiment",model="tier:3",tier="1"\} (\S+)', metrics)
    assert cost and float(cost.group(1)) == pytest.approx(shadow["spend_usd"], rel=1e-3)
    drift = shadow["failure_rate_low"] > 0.15  # Tier 3's target: DRIFT exactly when the shadow's bound passes it
    assert ("DRIFT" in row["flags"]) == drift == ('tier_feature_flag{feature="sentiment",flag="DRIFT"}' in metrics)


def test_the_judge_grades_with_the_rubric(gateway):
    for text in reviews(6):
        assert ask(gateway, "feature:graded", text)[0] == 200
    rows = wait_for_shadow(gateway, "graded", 6)
    assert all(r["gate"] == "shadow:judge" and r["completion_tokens"] <= 8 for r in rows)
    assert sum(r["shadow_agreed"] is not None for r in rows) >= 4  # a PASS or a FAIL came back


def test_killing_the_shadow_tier_never_fails_a_client_request(gateway, strong):
    strong.stop()
    before = len(shadow_rows(gateway, "sentiment"))
    for i, text in enumerate(reviews(10)):
        status, answer = ask(gateway, "feature:sentiment", text, stream=i % 2 == 1)
        assert status == 200 and normalize(answer) in ("positive", "negative")
    rows = wait_for_shadow(gateway, "sentiment", before + 10, timeout=120)[before:]
    assert all(r["shadow_agreed"] is None and r["error_type"] for r in rows)
