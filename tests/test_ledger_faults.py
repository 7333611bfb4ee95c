"""The ledger under faults, on real SQLite and a real PostgreSQL: rows no column can hold, rows the database
refuses, corrupt and torn spool lines, a dead writer, two processes on one spool, text past its retention."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import pytest
import sqlalchemy as sa

from hardware.errors import ConfigError
from tiers.ledger import schema
from tiers.ledger.rows import LedgerRow, new_attempt_id
from tiers.ledger.spool import Spool
from tiers.ledger.store import Ledger


def row(request_id: str = "req_1", **fields) -> LedgerRow:
    return LedgerRow(**{"attempt_id": new_attempt_id(), "request_id": request_id, "ts": time.time(),
                        "route": "feature:f", "feature": "f", "serving_tier": 3, "model": "m", **fields})


def stored(ledger: Ledger) -> dict[str, dict]:
    with ledger.engine.connect() as conn:
        return {r["request_id"]: dict(r) for r in conn.execute(sa.select(schema.attempts)).mappings()}


def dead_letters(ledger: Ledger) -> list[dict]:
    path = ledger.spool.folder / "dead-letter.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_fields_longer_than_their_columns_are_cut_and_later_rows_still_arrive(ledger_url, tmp_path):
    """PostgreSQL refuses a gate_reason over 120 characters; before the fix that one row stopped the ledger."""
    ledger = Ledger(ledger_url, tmp_path / "spool", flush_interval_s=0.05)
    ledger.start()
    path = "/properties/" + "/".join(f"field_{i}" for i in range(60))
    ledger.record([row("req_long", gate="json_schema", gate_passed=False, gate_reason=f"schema_violation@{path}",
                       model="m" * 500, error_type="e" * 100, completion_text="nul\x00byte", prompt_tokens=2**40)])
    ledger.record([row("req_after")])
    assert ledger.flush(timeout=10), ledger.health()
    rows = stored(ledger)
    assert set(rows) == {"req_long", "req_after"}
    long = rows["req_long"]
    assert long["gate_reason"].startswith("schema_violation@/properties/field_0") and len(long["gate_reason"]) <= 120
    assert len(long["model"]) <= 200 and len(long["error_type"]) <= 64
    assert long["completion_text"] == "nulbyte" and long["prompt_tokens"] == 2**31 - 1
    assert ledger.health() == {"state": "ok", "detail": "", "dead_letters": 0}
    ledger.close()


def refuse_prompt_tokens(ledger: Ledger, value: int) -> None:
    """An operator's constraint the row model knows nothing about: the database itself refuses the row."""
    with ledger.engine.begin() as conn:
        if ledger.engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"ALTER TABLE attempts ADD CONSTRAINT no_{value} CHECK (prompt_tokens <> {value})"))
        else:
            conn.execute(sa.text(f"CREATE TRIGGER no_{value} BEFORE INSERT ON attempts WHEN NEW.prompt_tokens = {value} "
                                 "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"))


def test_a_row_the_database_refuses_goes_to_the_dead_letter_file_and_the_rest_arrive(ledger_url, tmp_path):
    ledger = Ledger(ledger_url, tmp_path / "spool", flush_interval_s=0.05)
    ledger.migrate()
    refuse_prompt_tokens(ledger, 666)
    ledger.start()
    ledger.record([row("req_before"), row("req_refused", prompt_tokens=666), row("req_same_batch")])
    assert ledger.flush(timeout=10), ledger.health()
    ledger.record([row("req_later")])
    assert ledger.flush(timeout=10)
    assert set(stored(ledger)) == {"req_before", "req_same_batch", "req_later"}
    [letter] = dead_letters(ledger)
    assert json.loads(letter["line"])["request_id"] == "req_refused"
    assert letter["reason"].startswith("the database refused it: ")
    assert "no_666" in letter["reason"] or "refused by trigger" in letter["reason"]
    health = ledger.health()
    assert health["state"] == "ok" and health["dead_letters"] == 1 and "dead-letter.jsonl" in health["detail"]
    ledger.close()
    again = Ledger(ledger_url, tmp_path / "spool")  # the count survives a restart: the file is the record
    assert again.health()["dead_letters"] == 1
    again.close()


def test_corrupt_and_torn_spool_lines_are_set_aside_and_the_writer_lives_on(ledger_url, tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    good = [row(f"req_{i}").model_dump_json() for i in range(3)]
    (spool / "pending-1.jsonl").write_text(f"{good[0]}\n{{\"attempt_id\": \"att_x\", \"requ\n{good[1]}\n[1, 2]\n")
    (spool / "current.jsonl").write_text(f"{good[2]}\n{good[0][:40]}")  # a crash tore the last write
    ledger = Ledger(ledger_url, spool, flush_interval_s=0.05)
    ledger.start()
    assert ledger.flush(timeout=10), ledger.health()
    ledger.record([row("req_after")])
    assert ledger.flush(timeout=10), ledger.health()
    assert set(stored(ledger)) == {"req_0", "req_1", "req_2", "req_after"}
    reasons = [letter["reason"] for letter in dead_letters(ledger)]
    assert len(reasons) == 3 and sum("torn" in r for r in reasons) == 1
    assert ledger.health()["state"] == "ok" and ledger.health()["dead_letters"] == 3
    assert not list(spool.glob("pending-*"))
    ledger.close()


def test_a_writer_that_stopped_shows_as_failed(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}", tmp_path / "spool", flush_interval_s=0.01)

    def crash() -> bool:
        raise SystemExit("killed")  # not an Exception: the one kind the writer does not survive

    ledger._pass = crash
    ledger.start()
    ledger._thread.join(5)
    health = ledger.health()
    assert health["state"] == "failed" and "SystemExit" in health["detail"]
    ledger.close()


def test_a_second_process_on_the_same_spool_is_refused(ledger_url, tmp_path):
    ledger = Ledger(ledger_url, tmp_path / "spool")
    with pytest.raises(ConfigError) as refused:
        Ledger(ledger_url, tmp_path / "spool")
    assert str(tmp_path / "spool") in str(refused.value) and "--data-dir" in str(refused.value)
    script = f"from tiers.ledger.store import Ledger; Ledger({ledger_url!r}, {str(tmp_path / 'spool')!r})"
    other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert other.returncode != 0 and "in use by another process" in other.stderr
    ledger.close()
    Ledger(ledger_url, tmp_path / "spool").close()  # free again once the first one closed


def test_a_worker_claims_a_free_spool_slot_and_the_one_a_killed_worker_left(ledger_url, tmp_path):
    """`serve --workers 2`: each worker takes its own slot; one SIGKILLed mid-run leaves its spooled rows in its
    slot, and the worker started in its place claims that slot and loads them."""
    slots = [tmp_path / "spool" / f"worker-{i}" for i in range(2)]
    script = textwrap.dedent(f"""
        import os, time
        from tiers.ledger.rows import LedgerRow
        from tiers.ledger.spool import Spool
        from tiers.ledger.store import Ledger
        ledger = Ledger({ledger_url!r}, Spool.claim({[str(s) for s in slots]!r}))  # never started: rows stay spooled
        ledger.record([LedgerRow(attempt_id="att_killed", request_id="req_killed", ts=time.time(), route="tier:3")])
        print(ledger.spool.folder, flush=True)
        os.kill(os.getpid(), 9)
    """)
    first = Ledger(ledger_url, Spool.claim(slots))
    assert first.spool.folder == slots[0]
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert killed.returncode == -9 and killed.stdout.strip() == str(slots[1]), killed.stderr
    with pytest.raises(ConfigError, match="every ledger spool"):  # both slots held: no slot for a third worker
        Spool.claim(slots[:1])
    replacement = Ledger(ledger_url, Spool.claim(slots))
    assert replacement.spool.folder == slots[1]
    replacement.start()
    assert replacement.flush() and "req_killed" in stored(replacement)
    replacement.close()
    first.close()


def test_text_past_its_retention_is_erased_at_start_and_while_running(ledger_url, tmp_path):
    ledger = Ledger(ledger_url, tmp_path / "spool", flush_interval_s=0.05, purge_interval_s=0.2)
    ledger.migrate()
    expired = row("req_expired", prompt_text="old prompt", completion_text="old answer", text_expires_at=time.time() - 1)
    with ledger.engine.begin() as conn:  # already in the database when the gateway starts
        conn.execute(schema.attempts.insert(), [expired.model_dump()])
    ledger.start()
    assert ledger.flush()
    assert stored(ledger)["req_expired"]["prompt_text"] is None
    ledger.record([row("req_soon", prompt_text="p", completion_text="c", text_expires_at=time.time() + 1.0),
                   row("req_kept", prompt_text="p", completion_text="c", text_expires_at=time.time() + 3600)])
    assert ledger.flush()
    assert stored(ledger)["req_soon"]["completion_text"] == "c"
    deadline = time.monotonic() + 10
    while stored(ledger)["req_soon"]["completion_text"] is not None:
        assert time.monotonic() < deadline, "the periodic purge never ran"
        time.sleep(0.1)
    rows = stored(ledger)
    assert rows["req_soon"]["prompt_text"] is None and rows["req_soon"]["text_expires_at"] is None
    assert rows["req_kept"]["completion_text"] == "c"
    ledger.close()


def test_rows_written_by_an_older_version_into_the_spool_still_load(ledger_url, tmp_path):
    """A spool written before migration 2 lacks api, tool_calls and the spec hashes: the defaults fill them."""
    spool = tmp_path / "spool"
    spool.mkdir()
    old = row("req_old").model_dump(exclude={"api", "tool_calls", "gate_spec", "feature_spec"})
    (spool / "pending-1.jsonl").write_text(json.dumps(old) + "\n")
    ledger = Ledger(ledger_url, spool)
    ledger.start()
    assert ledger.flush()
    loaded = stored(ledger)["req_old"]
    assert (loaded["api"], loaded["tool_calls"], loaded["gate_spec"]) == ("chat", 0, None)
    ledger.close()


def test_a_database_outage_while_a_row_is_spooled_is_not_a_dead_letter(postgres, fresh_postgres_url, tmp_path):
    ledger = Ledger(fresh_postgres_url, tmp_path / "spool", flush_interval_s=0.05)
    ledger.start()
    postgres.halt()
    try:
        ledger.record([row("req_during")])
        assert not ledger.flush(timeout=2)
        health = ledger.health()
        assert health["state"] == "degraded" and health["dead_letters"] == 0
    finally:
        postgres.launch()
    assert ledger.flush(timeout=20)
    assert set(stored(ledger)) == {"req_during"} and ledger.health()["state"] == "ok"
    ledger.close()


def test_a_process_killed_mid_write_leaves_a_torn_line_that_is_set_aside(tmp_path):
    url, spool = f"sqlite:///{tmp_path / 'l.db'}", tmp_path / "spool"
    script = textwrap.dedent(f"""
        import os, signal, time
        from tiers.ledger.store import Ledger
        from tiers.ledger.rows import LedgerRow
        ledger = Ledger({url!r}, {str(spool)!r}, flush_interval_s=3600)
        ledger.record([LedgerRow(attempt_id="att_whole", request_id="req_whole", ts=time.time(), route="tier:3")])
        ledger.spool._file.write('{{"attempt_id": "att_torn", "request_id": "req_')
        ledger.spool._file.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", script], capture_output=True).returncode == -9
    ledger = Ledger(url, spool)
    ledger.start()
    ledger.record([LedgerRow(attempt_id="att_next", request_id="req_next", ts=time.time(), route="tier:3")])
    assert ledger.flush()
    assert set(stored(ledger)) == {"req_whole", "req_next"}
    assert [letter["reason"] for letter in dead_letters(ledger)] == [
        "line 2 is torn (no end of line): the writing process stopped mid-row"]
    ledger.close()
