"""GET /dashboard against a real gateway with real traffic (SmolLM2 on the shipped features), rendered by a real
headless Chromium: one self-contained page that reloads itself, a row per feature with volume, spend share,
failure rates with intervals, cache hits, escalations, budget use, flags and recommendations, and the tell plot.
The screenshot is checked for what a reader would look for (the red flags, the plot), not only for its size."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    root = tmp_path_factory.mktemp("dashboard")
    proc = ServerProcess(log_path=root / "gateway.log")  # cpu-tier3: Tier 3 only, the shipped routing table
    proc.wait_ready(timeout=300)
    yield proc
    proc.stop()


def post(gateway, feature: str, text: str) -> httpx.Response:
    return httpx.post(f"{gateway.base_url}/v1/chat/completions", timeout=120,
                      json={"model": f"feature:{feature}", "messages": [{"role": "user", "content": text}]})


def traffic(gateway) -> None:
    tickets = [json.loads(line) for line in (REPO / "tests" / "data" / "tickets.jsonl").read_text().splitlines()]
    for ticket in tickets[:12] + tickets[:4]:  # the repeats are answered from the semantic cache
        assert post(gateway, "ticket-triage", ticket["body"]).status_code == 200
    for text in ("The film is a delight from start to finish.", "A tedious, joyless mess.",
                 "I loved every minute of it.", "Two hours I will never get back."):
        response = post(gateway, "review-sentiment", text)
        assert response.status_code == 200
        outcome = "negative" if "mess" in text else "accepted"
        assert httpx.post(f"{gateway.base_url}/v1/feedback", timeout=30, json={
            "request_id": response.headers["x-request-id"], "outcome": outcome}).status_code == 200
    # contract-review is Tier 1, which cpu-tier3 does not serve: 503s, recorded as failures
    assert post(gateway, "contract-review", "The supplier may end this agreement at any time.").status_code == 503


def test_the_dashboard_renders_live_data_in_chromium(gateway, tmp_path):
    traffic(gateway)
    url = f"{gateway.base_url}/dashboard?refresh_s=30"
    page = httpx.get(url, timeout=120)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<meta http-equiv="refresh" content="30">' in html
    assert not re.search(r'(src|href)="https?://', html) and "<script src" not in html  # nothing fetched

    chromium = shutil.which("chromium")
    assert chromium, "Chromium is needed for this check: apt-get install chromium (.ci/run does)"
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    table = dom.stdout.split('id="features"', 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    assert len(rows) == 1 + 6  # the header and the six shipped features
    cells = {re.sub(r"<.*?>", "", r.split("</td>")[0]): [re.sub(r"<.*?>", "", c) for c in r.split("</td>")]
             for r in rows[1:]}
    triage = cells["ticket-triage"]
    assert triage[3] == "16" and triage[7] == "25%" and "[" in triage[5]  # 16 requests, 4 of them cache hits
    assert "of $20/month" in triage[9]
    sentiment = cells["review-sentiment"]
    assert sentiment[5].startswith("25.0% [")  # one negative feedback of four
    assert "INVERTED" in cells["contract-review"][10] and "NO_DATA" in cells["knowledge-qa"][10]
    assert all("evidence" in c[11] or "Tier" in c[11] for c in cells.values())  # a recommendation for each
    assert 'id="failure-plot"' in dom.stdout and dom.stdout.count("<svg") >= 2

    shot = tmp_path / "dashboard.png"
    subprocess.run([chromium, *flags, "--window-size=1600,1200", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    from PIL import Image

    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50  # text, plot and flags, not a blank or error page
    red = sum(n for n, (r, g, b) in colours if abs(r - 0xC0) < 12 and abs(g - 0x39) < 12 and abs(b - 0x2B) < 12)
    assert red > 200  # the red flag badges and the INVERTED point of the plot are drawn
    Path("/tmp/dashboard.png").write_bytes(shot.read_bytes())  # for a human to look at
