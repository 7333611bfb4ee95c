"""API keys, isolation and secrets, through the real server: 401, 403, 429 with Retry-After, admin only.

Secrets planted here (client keys, the admin key, a provider key) must appear in no output: the log,
error bodies, the ledger, /metrics or the audit report.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import sqlalchemy as sa

from tests.conftest import REPO, ServerProcess, free_port
from tiers.auth import hash_key
from tiers.ledger import schema

SUPPORT_KEY = "trk-support-secret-0001"
OPS_KEY = "trk-ops-secret-0002"
SLOW_KEY = "trk-slow-secret-0003"
ADMIN_KEY = "trk-admin-secret-0004"
PROVIDER_KEY = "sk-provider-secret-0005"
SECRETS = [SUPPORT_KEY, OPS_KEY, SLOW_KEY, ADMIN_KEY, PROVIDER_KEY]

KEYS = f"""admin_sha256: {hash_key(ADMIN_KEY)}
keys:
  - {{id: support-bot, sha256: {hash_key(SUPPORT_KEY)}, features: [ticket-triage]}}
  - {{id: ops-console, sha256: {hash_key(OPS_KEY)}, features: ["*"], direct_tiers: true}}
  - id: slow-client
    sha256: {hash_key(SLOW_KEY)}
    features: [ticket-triage]
    rate_limit: {{requests_per_minute: 2}}
"""
PROFILE = f"""devices: {{cpu: {{kind: cpu}}}}
tiers:
  3: {{runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, price: {{input_per_m: 1, output_per_m: 1}}}}
  1: {{runner: hosted, model: gpt-test, base_url: "http://127.0.0.1:{free_port()}/v1", api_key_env: PLANTED_PROVIDER_KEY}}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("secure")
    (root / "keys.yaml").write_text(KEYS)
    (root / "profile.yaml").write_text(PROFILE)
    proc = ServerProcess("--keys", str(root / "keys.yaml"), "--profile", str(root / "profile.yaml"),
                         env={"PLANTED_PROVIDER_KEY": PROVIDER_KEY}, log_path=root / "server.log")
    proc.wait_ready()
    proc.root = root
    yield proc
    proc.stop()


def chat(server, key: str | None, model="feature:ticket-triage", header="authorization") -> httpx.Response:
    headers = {}
    if key:
        headers = {"authorization": f"Bearer {key}"} if header == "authorization" else {"x-api-key": key}
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 12}
    return httpx.post(f"{server.base_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


def test_missing_or_wrong_key_is_401(server):
    for response in (chat(server, None), chat(server, "trk-not-a-key")):
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    assert httpx.get(f"{server.base_url}/health").status_code == 200  # probes stay open


def test_a_key_reaches_only_its_features(server):
    assert chat(server, SUPPORT_KEY).status_code == 200
    assert chat(server, SUPPORT_KEY, header="x-api-key").status_code == 200
    denied = chat(server, SUPPORT_KEY, model="feature:contract-review")
    assert denied.status_code == 403 and "support-bot" in denied.json()["error"]["message"]
    assert chat(server, SUPPORT_KEY, model="tier:3").status_code == 403  # direct tier use is per key
    assert chat(server, OPS_KEY, model="tier:3").status_code == 200


def test_rate_limit_is_429_with_retry_after(server):
    statuses = [chat(server, SLOW_KEY) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert 1 <= int(statuses[2].headers["retry-after"]) <= 60
    assert statuses[2].json()["error"]["type"] == "rate_limit_error"
    assert chat(server, SUPPORT_KEY).status_code == 200  # other keys have their own buckets


def test_admin_endpoints_need_the_admin_key(server):
    url = f"{server.base_url}/admin/reload"
    assert httpx.post(url).status_code == 401
    assert httpx.post(url, headers={"authorization": f"Bearer {OPS_KEY}"}).status_code == 403
    assert httpx.post(url, headers={"authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    assert httpx.get(f"{server.base_url}/v1/audit", headers={"authorization": f"Bearer {SUPPORT_KEY}"}).status_code == 403


def test_ledger_records_the_key_id_never_the_key(server):
    response = chat(server, OPS_KEY)
    httpx.get(f"{server.base_url}/v1/audit", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    engine = sa.create_engine(f"sqlite:///{server.data_dir / 'ledger.db'}")
    with engine.connect() as conn:
        row = conn.execute(sa.select(schema.attempts).where(
            schema.attempts.c.request_id == response.headers["x-request-id"])).mappings().one()
    engine.dispose()
    assert row["client_key_id"] == "ops-console"


def test_no_secret_appears_in_any_output(server):
    outputs = []
    outputs.append(chat(server, OPS_KEY, model="feature:contract-review").text)  # tier 1 unreachable: 503 body
    outputs.append(chat(server, "trk-not-a-key").text)
    outputs.append(httpx.get(f"{server.base_url}/metrics").text)
    outputs.append(httpx.get(f"{server.base_url}/ready").text)
    outputs.append(httpx.get(f"{server.base_url}/v1/audit", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text)
    report = server.root / "audit.html"
    subprocess.run([sys.executable, "-m", "tiers", "audit", "--data-dir", str(server.data_dir), "--format", "html",
                    "--output", str(report)], cwd=REPO, check=True, capture_output=True)
    outputs.append(report.read_text())
    outputs.append(server.output())
    outputs.append((server.data_dir / "ledger.db").read_bytes().decode("latin-1"))
    for secret in SECRETS:
        for text in outputs:
            assert secret not in text


def test_keyless_server_refuses_a_public_address(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tiers", "serve", "--host", "0.0.0.0", "--port", "0",
                             "--data-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "refusing to serve 0.0.0.0 without client keys" in result.stderr


def test_keys_new_prints_a_key_and_only_its_hash_for_the_file():
    result = subprocess.run([sys.executable, "-m", "tiers", "keys", "new", "--id", "bot", "--feature", "faq"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    secret = result.stderr.split(": ")[-1].strip()
    assert secret.startswith("trk-") and secret not in result.stdout
    assert hash_key(secret) in result.stdout and "features: [faq]" in result.stdout
