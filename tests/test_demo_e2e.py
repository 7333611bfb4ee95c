"""`make demo` end to end (real models on the demo profile, a real gateway, its real ledger): it prints the
audit and the reading, writes the report, and every flag it shows follows from the ledger rows it wrote.

The flags are recomputed here from the raw rows (attempts and feedback), with a Wilson interval of our own,
not through tiers/audit.py: a demo whose flags did not come from its own measurements would fail.
Under CI=true the replay is the smaller one.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
from collections import Counter

import pytest

from tests.conftest import REPO
from tiers.routing import load_routing

NEGATIVE = {"corrected", "escalated_to_human", "negative"}


def wilson(failures: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = failures / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    done = subprocess.run(["make", "--no-print-directory", "demo", f"DEMO_OUT={out}"], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "CI": os.environ.get("CI", "true")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout, done.stderr


def expected_flags(db: sqlite3.Connection) -> dict[str, list[str]]:
    table = load_routing()
    feedback = dict(db.execute("SELECT request_id, outcome FROM feedback ORDER BY ts, id").fetchall())
    flags = {}
    for name, spec in table.features.items():
        finals = db.execute("SELECT request_id, serving_tier, model, error_type, gate_passed FROM attempts "
                            "WHERE feature = ? AND final ORDER BY ts", (name,)).fetchall()
        if not finals:
            flags[name] = ["NO_DATA"]
            continue
        failed = sum(bool(err) or gate == 0 or feedback.get(rid) in NEGATIVE for rid, _, _, err, gate in finals)
        serving = Counter((t, m) for _, t, m, _, _ in finals if t).most_common(1)[0][0][0]
        low, high = wilson(failed, len(finals))
        mine = []
        if (spec.value in ("revenue", "risk") and serving == 3) or low > table.failure_targets[serving]:
            mine.append("INVERTED")
        if spec.value in ("internal", "retention") and serving == 1 and high < table.failure_targets[2]:
            mine.append("OVERSPEND")
        flags[name] = mine
    return flags


def test_demo_flags_follow_from_the_ledger_rows_it_wrote(demo):
    out, stdout, stderr = demo
    summary = json.loads((out / "demo.json").read_text())
    shown = {f["feature"]: [x for x in f["flags"] if x != "OVER_BUDGET"] for f in summary["audit"]["features"]}
    with sqlite3.connect(out / "ledger.db") as db:
        assert shown == expected_flags(db)
        answered = [s for s in summary["sent"] if s["status"] == 200]
        feedback_ids = {r for (r,) in db.execute("SELECT request_id FROM feedback")}
        assert {s["request_id"] for s in answered} <= feedback_ids  # feedback from the gold labels on every answer
        requests = db.execute("SELECT COUNT(DISTINCT request_id) FROM attempts").fetchone()[0]
        assert requests == summary["requests"]
        hits = db.execute("SELECT COUNT(*) FROM attempts WHERE cache_hit").fetchone()[0]
        assert hits == summary["cache_hits"]
    assert any({"INVERTED", "OVERSPEND"} & set(f) for f in shown.values()), shown  # the measured failures show it


def test_demo_prints_the_table_the_report_and_one_reading(demo):
    out, stdout, stderr = demo
    summary = json.loads((out / "demo.json").read_text())
    assert "| feature | value | tier | serving |" in stdout and "review-sentiment" in stdout
    assert f"HTML report: {(out / 'audit.html').resolve()}" in stdout
    assert (out / "audit.html").read_text().startswith("<!doctype html>")
    readings = [line for line in stdout.splitlines() if line.startswith("Reading: ")]
    assert readings == [summary["reading"]]
    flagged = [f for f in summary["audit"]["features"] if {"INVERTED", "OVERSPEND"} & set(f["flags"])]
    assert any(f"move {f['feature']} " in readings[0] for f in flagged), readings
    assert "replaying labelled requests" in stderr  # the progress bar
    assert "stand-in" in stderr  # the profile says which tiers are stand-ins
