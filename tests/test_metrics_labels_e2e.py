"""Prometheus labels stay bounded through the real server: a model name a client made up is never a label value."""

from __future__ import annotations

import re

import httpx


def test_unknown_model_names_collapse_into_one_label_value(server):
    for model in ("gpt-4o-xyz", "gpt-4o-xyz-2", "feature:contract-reveiw", "tier:9"):
        response = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                              json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code in (400, 404), response.text
    assert httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60,
                      json={"model": "tier:3", "max_tokens": 2,
                            "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    text = httpx.get(f"{server.base_url}/metrics").text
    features = set(re.findall(r'^tier_\w+\{.*?feature="([^"]*)"', text, re.M))
    assert not any("xyz" in f or "reveiw" in f or f == "tier:9" for f in features), features
    errors = [line for line in text.splitlines() if line.startswith("tier_errors_total{")]
    assert any('feature="unknown"' in line and 'error_type="model_not_found"' in line and not line.endswith(" 0.0")
               for line in errors), errors
    assert 'feature="tier:3"' in text  # a direct tier stays a label of its own
