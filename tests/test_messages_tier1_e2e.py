"""/v1/messages in front of a hosted Anthropic Tier 1: the ingress and the egress translation in one chain.

anthropic SDK -> our gateway's /v1/messages -> Tier 1 `provider: anthropic` -> LiteLLM's proxy (a real
Anthropic-protocol server) -> the session gateway's Tier 3 (SmolLM2). What comes back has crossed
Anthropic's wire twice, so stop reasons, usage and stream events are checked end to end.
"""

from __future__ import annotations

import anthropic
import pytest

from tests.conftest import ServerProcess
from tests.litellm_proxy import LITELLM, MODEL, LiteLLMProxy

MASTER_KEY = "sk-litellm-planted-secret-9911"
ASK = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
T0 = {"temperature": 0}

pytestmark = pytest.mark.skipif(not LITELLM.exists(), reason="LiteLLM is not installed: run `make litellm-setup`")


@pytest.fixture(scope="module")
def gateway(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("messages-tier1")
    proxy = LiteLLMProxy(f"{server.base_url}/v1", MASTER_KEY, root)
    proxy.wait_ready()
    (root / "profile.yaml").write_text(
        f'tiers:\n  1: {{runner: hosted, provider: anthropic, model: {MODEL}, api_key_env: TIER1_KEY, '
        f'base_url: "{proxy.base_url}", max_attempts: 1}}\n')
    proc = ServerProcess("--profile", str(root / "profile.yaml"), env={"TIER1_KEY": MASTER_KEY},
                         log_path=root / "gateway.log")
    try:
        proc.wait_ready(timeout=60)
        yield proc
    finally:
        proc.stop()
        proxy.stop()
        assert MASTER_KEY not in proc.log_path.read_text()


@pytest.fixture(scope="module")
def client(gateway):
    return anthropic.Anthropic(base_url=gateway.base_url, api_key="unused-on-loopback", max_retries=0)


def test_a_message_through_a_hosted_anthropic_tier(client):
    raw = client.messages.with_raw_response.create(model="tier:1", max_tokens=16, extra_body=T0, messages=ASK,
                                                   system="You are a geography teacher.")
    assert raw.headers["x-tier"] == "1" and raw.headers["x-model"] == MODEL
    message = raw.parse()
    assert "Paris" in message.content[0].text and message.stop_reason in ("end_turn", "max_tokens")
    assert message.usage.input_tokens > 10 and 0 < message.usage.output_tokens <= 16
    cut = client.messages.create(model="tier:1", max_tokens=2, extra_body=T0, messages=ASK)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2


def test_the_stream_crosses_both_translations_intact(client):
    kwargs = dict(model="tier:1", max_tokens=16, extra_body=T0, messages=ASK)
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.usage.output_tokens == whole.usage.output_tokens


def test_count_tokens_on_a_hosted_tier_is_an_estimate(client):
    counted = client.messages.with_raw_response.count_tokens(model="tier:1", messages=ASK)
    assert counted.headers["x-token-count"] == "estimate" and counted.parse().input_tokens > 0
