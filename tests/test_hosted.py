"""The hosted runner's configuration from the environment: base URL override, missing key, what /ready says.

Requests against real upstreams are in test_cascade_e2e.py, test_hosted_faults_e2e.py and test_anthropic_e2e.py.
"""

from __future__ import annotations

import asyncio

import pytest

from hardware.errors import ConfigError
from runners.errors import TierUnavailable
from hardware.profile import TierPlacement
from runners.base import build_runner
from runners.request import Request


def hosted(**options):
    return build_runner(1, TierPlacement(runner="hosted", model="gpt-4o-mini", **options), "test")


def started(runner):
    async def go():
        await runner.start()
        status = runner.status()
        await runner.stop()
        return status

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def no_provider_env(monkeypatch):
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("provider", "variable"), [("openai", "OPENAI_BASE_URL"), ("anthropic", "ANTHROPIC_BASE_URL")])
def test_the_base_url_variable_defaults_to_the_sdks_own(provider, variable):
    assert hosted(provider=provider).options.base_url_env == variable
    assert hosted(provider=provider, base_url_env=None).options.base_url_env is None


def test_the_base_url_variable_replaces_base_url_and_says_so(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1")
    runner = hosted(base_url="https://api.example.com/v1")
    status = started(runner)
    assert runner.base_url == "http://127.0.0.1:9999/v1"
    assert (status.state, status.detail) == ("ready", "base_url from OPENAI_BASE_URL")
    assert runner.where == "tier 1 (gpt-4o-mini at 127.0.0.1:9999)"


def test_null_base_url_env_keeps_the_profiles_base_url(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1")
    runner = hosted(base_url="https://api.example.com/v1", base_url_env=None)
    assert (started(runner).state, runner.base_url) == ("ready", "https://api.example.com/v1")


def test_a_base_url_variable_that_is_not_a_url_is_a_config_error_without_its_value(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "secret-ish-value")
    with pytest.raises(ConfigError, match="OPENAI_BASE_URL replaces base_url but is not an http") as err:
        started(hosted())
    assert "secret-ish-value" not in err.value.message


def test_a_missing_key_is_not_configured_and_requests_name_the_variable():
    runner = hosted()
    asyncio.run(runner.start())  # nothing to stop: without a key no client is made
    status = runner.status()
    assert status.state == "not_configured"
    assert "OPENAI_API_KEY is not set: export OPENAI_API_KEY=<your key>" in status.detail
    request = Request.model_validate({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    with pytest.raises(TierUnavailable, match="is not configured: environment variable OPENAI_API_KEY is not set"):
        runner._body(request, stream=False)


def test_credentials_in_the_base_url_stay_out_of_messages():
    assert hosted(base_url="https://user:pw@gateway.example.com:8443/v1").where == \
        "tier 1 (gpt-4o-mini at gateway.example.com:8443)"
