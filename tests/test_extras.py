"""Optional stacks are pip extras; without one, the feature that needs it stops the command at start, naming the
extra, never at the first request or at the end of a long run.

Each case runs the real `tier-runner` command in a child Python in which the package is missing: a finder first
on `sys.meta_path` refuses to import it, exactly as an environment without it would. That is the real start
path at the cost of one interpreter start, where a virtual environment per missing extra would cost a full
install (llama-cpp-python compiles for minutes).
"""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from tests.conftest import REPO, free_port

WITHOUT = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in MISSING:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
MISSING = set(sys.argv[1].split(","))
sys.meta_path.insert(0, Missing())
sys.argv = ["tier-runner", *sys.argv[2:]]
from tiers.cli import main
main()
"""


def tier_runner_without(missing: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT, missing, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_the_optional_stacks_are_extras_and_make_test_installs_them_all():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    for package in ("psycopg", "redis", "faiss", "matplotlib", "scipy", "pyarrow"):
        assert package not in core
    extras = project["optional-dependencies"]
    assert {"postgres", "redis", "faiss", "reports", "evals"} <= set(extras)
    assert "value-tier-runner[cache,postgres,redis,faiss,reports,evals]" in extras["dev"]
    assert "'.[dev]'" in (REPO / "Makefile").read_text()


def test_a_postgresql_ledger_without_psycopg_stops_serve_at_start(tmp_path):
    result = tier_runner_without("psycopg", "serve", "--profile", "cpu-tier3", "--port", str(free_port()),
                                 "--data-dir", str(tmp_path / "data"),
                                 "--ledger-url", "postgresql+psycopg://postgres@127.0.0.1:9/ledger")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pip install 'value-tier-runner[postgres]'" in result.stderr and "serving on" not in result.stderr


def test_a_redis_cache_without_redis_stops_serve_at_start(tmp_path):
    result = tier_runner_without("redis", "serve", "--profile", "cpu-tier3", "--port", str(free_port()),
                                 "--data-dir", str(tmp_path / "data"), "--cache-backend", "redis",
                                 "--redis-url", "redis://127.0.0.1:9/0")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pip install 'value-tier-runner[redis]'" in result.stderr and "serving on" not in result.stderr


def test_an_html_audit_without_matplotlib_stops_before_reading_the_ledger(tmp_path):
    result = tier_runner_without("matplotlib", "audit", "--format", "html", "--data-dir", str(tmp_path / "none"),
                                 "--output", str(tmp_path / "audit.html"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "pip install 'value-tier-runner[reports]'" in result.stderr and not (tmp_path / "audit.html").exists()


@pytest.mark.parametrize(("missing", "args", "extra"), [
    ("matplotlib", ["--suites", "snips-intent", "--report-html", "report.html"], "reports"),
    ("pyarrow", ["--suites", "sst2-sentiment"], "evals"),
])
def test_an_eval_without_its_extra_stops_before_any_example_runs(missing, args, extra, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"  # never reached: the check comes first
    result = tier_runner_without(missing, "eval", "--url", dead, "--store", str(tmp_path / "evals.db"), *args)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"pip install 'value-tier-runner[{extra}]'" in result.stderr and "cannot reach" not in result.stderr


def test_a_memory_cache_that_may_grow_past_the_hnsw_switch_without_faiss_stops_serve_at_start(tmp_path):
    routing = tmp_path / "routing.yaml"
    routing.write_text("features:\n  faq: {tier: 3, value: internal, owner: ops, failure_cost_usd: 0,\n"
                       "        cache: {max_entries: 50000}}\n  small: {tier: 3, value: internal, owner: ops, "
                       "failure_cost_usd: 0, cache: {}}\n")
    result = tier_runner_without("faiss", "serve", "--profile", "cpu-tier3", "--port", str(free_port()),
                                 "--data-dir", str(tmp_path / "data"), "--routing", str(routing))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "feature 'faq'" in result.stderr and "pip install 'value-tier-runner[faiss]'" in result.stderr
    assert "'small'" not in result.stderr and "serving on" not in result.stderr
