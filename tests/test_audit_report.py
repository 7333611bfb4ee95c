"""The audit's HTML report is one self-contained file that renders in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from tests.test_ledger_e2e import seeded_audit
from tiers.audit import Audit
from tiers.audit_report import render_html


def test_report_renders_table_and_both_plots_in_chromium(tmp_path):
    rows = seeded_audit(f"sqlite:///{tmp_path / 'l.db'}", tmp_path)
    audit = Audit(since=0, until=1, rows=list(rows.values()), groups=[])
    page = tmp_path / "audit.html"
    page.write_text(render_html(audit), encoding="utf-8")
    text = page.read_text()
    assert not re.search(r'(src|href)="https?://', text)  # self-contained: nothing is fetched from elsewhere

    chromium = shutil.which("chromium")
    assert chromium, "Chromium is needed for this check: apt-get install chromium (.ci/run does)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<tr>") == 5  # header + four features
    assert 'id="failure-plot"' in dom.stdout and 'id="share-plot"' in dom.stdout
    assert dom.stdout.count("<svg") >= 2
    for flag in ("INVERTED", "OVERSPEND", "NO_DATA"):
        assert flag in dom.stdout
    shot = tmp_path / "audit.png"
    subprocess.run([chromium, *flags, "--window-size=1400,1100", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    Path("/tmp/audit-report.png").write_bytes(shot.read_bytes())  # for a human to look at
