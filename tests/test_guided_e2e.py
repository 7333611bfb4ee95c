"""vLLM's guided_* fields: only the vLLM runner takes them; llama.cpp (and hosted APIs) answer 400 by name.

The vLLM side is in test_vllm_e2e.py (guided_choice passes through and constrains the answer).
"""

from __future__ import annotations

import httpx
import pytest


@pytest.mark.parametrize("field, value", [("guided_json", {"type": "object"}), ("guided_choice", ["yes", "no"]),
                                          ("guided_regex", "[a-z]+")])
def test_llamacpp_tier_rejects_guided_fields_by_name(server, field, value):
    body = {"model": "tier:3", "messages": [{"role": "user", "content": "Say yes."}], "max_tokens": 3, field: value}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and "response_format" in error["message"]
