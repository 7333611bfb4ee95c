"""The shipped workstation profile on a fresh machine: no OPENAI_API_KEY exported.

Its Tier 1 is `optional`, so the gateway still gets ready; /ready shows the tier not configured, naming
the variable, and its requests answer a clean 503 that says what to export. Tier 2 (vLLM) is left out
here to keep this fast; test_vllm_e2e.py serves the whole profile with `make serve-tiers`.
"""

from __future__ import annotations

import httpx
import yaml

from hardware.profile import PROFILES_DIR
from tests.conftest import ServerProcess
from tests.openai_schema import validate


def test_workstation_without_a_key_is_ready_and_tier_1_answers_503_naming_the_variable(tmp_path):
    data = yaml.safe_load((PROFILES_DIR / "workstation.yaml").read_text())
    del data["tiers"][2]
    profile = tmp_path / "workstation.yaml"
    profile.write_text(yaml.safe_dump(data))
    server = ServerProcess("--profile", str(profile), log_path=tmp_path / "server.log")  # no provider variables
    try:
        server.wait_ready(timeout=120)
        ready = httpx.get(f"{server.base_url}/ready", timeout=5)
        assert ready.status_code == 200
        tier1 = ready.json()["tiers"]["1"]
        assert (tier1["state"], tier1["runner"], tier1["model"], tier1["optional"]) == \
            ("not_configured", "hosted", "gpt-4o-mini", True)
        assert "OPENAI_API_KEY is not set" in tier1["detail"]
        assert ready.json()["tiers"]["3"]["state"] == "ready"

        for model in ("tier:1", "feature:contract-review"):
            response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30, json={
                "model": model, "messages": [{"role": "user", "content": "Review this clause."}], "max_tokens": 4})
            assert response.status_code == 503, response.text
            validate(response.json(), "ErrorResponse")
            error = response.json()["error"]
            assert error["type"] == "service_unavailable" and error["code"] == "tier_unavailable"
            assert "tier 1 (gpt-4o-mini) is not configured" in error["message"]
            assert "export OPENAI_API_KEY=<your key>" in error["message"]
        tier3 = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
            "model": "tier:3", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert tier3.status_code == 200 and tier3.headers["x-tier"] == "3"
    finally:
        server.stop()
    assert "tier 1 (gpt-4o-mini on hosted) is not configured" in server.output()  # said at start, in the log
