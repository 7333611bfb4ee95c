"""Eval suites over the user's own data: JSONL, CSV and Parquet files next to the suite, a YAML field mapping, a
record function from a plugin's entry point, and errors that name the file, the column and the columns there are.
The last test runs the JSONL suite in tests/data end to end through `tier-runner eval` with the real model."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evals import user_data
from evals.suite import load_suite
from hardware.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"

SUITE = """
name: my-tickets
feature: ticket-triage
tier: 3
source: {{path: {path}}}
fields: {fields}
n: 50
prompt: {{user: "Subject: {{subject}}"}}
scorer: {{name: label, args: {{labels: [billing, shipping, account, technical, other]}}}}
"""


def write_suite(folder: Path, path: str, fields: str, extra: str = "") -> Path:
    suite = folder / "suite.yaml"
    suite.write_text(SUITE.format(path=path, fields=fields) + extra)
    return suite


def tickets() -> list[dict]:
    return [json.loads(line) for line in (DATA / "tickets.jsonl").read_text().splitlines()]


def test_the_shipped_test_suite_maps_its_columns_without_python():
    suite = load_suite(DATA / "tickets-suite.yaml")
    samples = suite.samples()
    assert len(samples) == 20 and {s.target for s in samples} == {"billing", "shipping", "account", "technical", "other"}
    first = next(s for s in samples if s.id == "T-1001")
    assert first.fields == {"subject": "Charged twice this month", "body": tickets()[0]["body"]}
    assert "Subject: Charged twice this month" in suite.messages(first)[-1]["content"]


def test_a_path_is_relative_to_the_suite_file_not_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text((DATA / "tickets.jsonl").read_text())
    suite_file = write_suite(tmp_path, "data/t.jsonl", "{id: ticket_id, target: queue, subject: subject}")
    monkeypatch.chdir(REPO)
    assert len(load_suite(suite_file).samples()) == 20


def test_a_wrong_column_names_the_file_the_column_and_the_columns_that_exist(tmp_path):
    (tmp_path / "t.jsonl").write_text((DATA / "tickets.jsonl").read_text())
    suite_file = write_suite(tmp_path, "t.jsonl", "{id: ticket_id, target: queu, subject: subject}")
    with pytest.raises(ConfigError) as info:
        load_suite(suite_file).samples()
    message = str(info.value)
    assert str(suite_file) in message and "fields.target" in message and "'queu'" in message
    assert str(tmp_path / "t.jsonl") in message
    assert "ticket_id, subject, body, queue, channel" in message


def test_csv_and_parquet_read_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tickets()
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(json.dumps(str(r[h])) for h in header) for r in rows]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    fields = "{id: ticket_id, target: queue, subject: subject}"
    got = {}
    for name in ("t.csv", "t.parquet"):
        got[name] = [(s.id, s.target, s.fields["subject"]) for s in load_suite(write_suite(tmp_path, name, fields)).samples()]
    assert got["t.csv"] == got["t.parquet"] and len(got["t.csv"]) == 20


def test_the_mapping_needs_id_and_target_and_a_file_source(tmp_path):
    (tmp_path / "t.jsonl").write_text((DATA / "tickets.jsonl").read_text())
    with pytest.raises(ConfigError, match="fields needs target"):
        load_suite(write_suite(tmp_path, "t.jsonl", "{id: ticket_id, subject: subject}"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(SUITE.format(path="t.jsonl", fields="{id: ticket_id, target: queue}").replace("path: t.jsonl",
                   "ledger: .data, feature: ticket-triage"))
    with pytest.raises(ConfigError, match="needs source: {path"):
        load_suite(bad)
    with pytest.raises(ConfigError, match="cannot tell the format"):
        load_suite(write_suite(tmp_path, "t.txt", "{id: ticket_id, target: queue}")).samples()


def test_a_record_function_from_a_plugin_entry_point(tmp_path, monkeypatch):
    plugin = tmp_path / "plugin"
    (plugin / "my_records-1.0.dist-info").mkdir(parents=True)
    (plugin / "my_records-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: my-records\nVersion: 1.0\n")
    (plugin / "my_records-1.0.dist-info" / "entry_points.txt").write_text(
        "[tier_runner.records]\nhelpdesk = my_records:helpdesk\n")
    (plugin / "my_records.py").write_text(textwrap.dedent("""
        from evals.suite import Sample

        def helpdesk(row):
            return Sample(row["ticket_id"], row["queue"], {"subject": row["subject"].upper()})
    """))
    monkeypatch.syspath_prepend(str(plugin))
    user_data.plugin_records.cache_clear()
    try:
        (tmp_path / "t.jsonl").write_text((DATA / "tickets.jsonl").read_text())
        suite_file = tmp_path / "s.yaml"
        suite_file.write_text(write_suite(tmp_path, "t.jsonl", "null").read_text().replace("fields: null",
                                                                                          "record: helpdesk"))
        samples = load_suite(suite_file).samples()
        assert samples and all(s.fields["subject"].isupper() for s in samples)
        suite_file.write_text(suite_file.read_text().replace("record: helpdesk", "record: helpdeks"))
        with pytest.raises(ConfigError, match="installed plugins add: helpdesk"):
            load_suite(suite_file)
    finally:
        user_data.plugin_records.cache_clear()


def test_edited_data_is_a_new_fingerprint(tmp_path):
    (tmp_path / "t.jsonl").write_text((DATA / "tickets.jsonl").read_text())
    suite_file = write_suite(tmp_path, "t.jsonl", "{id: ticket_id, target: queue, subject: subject}")
    before = load_suite(suite_file).fingerprint()
    (tmp_path / "t.jsonl").write_text((DATA / "tickets.jsonl").read_text().replace("billing", "other", 1))
    assert load_suite(suite_file).fingerprint() != before


def test_a_jsonl_suite_runs_end_to_end_through_the_cli(tmp_path):
    """`tier-runner eval` on the suite file: a real gateway with SmolLM2, every ticket scored, a report."""
    report = tmp_path / "report.md"
    run = subprocess.run([sys.executable, "-m", "tiers", "eval", "--suites", str(DATA / "tickets-suite.yaml"),
                          "--model", "smollm2-135m-instruct-q4_1", "--store", str(tmp_path / "evals.db"),
                          "--report-md", str(report)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(next(line for line in run.stderr.splitlines() if line.startswith('{"version"')))
    assert summary["status"] == "success" and summary["examples"] == 20 and summary["ran"] == 20
    assert sum(summary["outcomes"][k] for k in ("correct", "wrong", "unparseable")) == 20
    table = report.read_text()
    assert "tickets-triage" in table and "smollm2-135m-instruct-q4_1" in table
