"""LiteLLM's proxy as a real Anthropic Messages server (POST /v1/messages) in front of a local OpenAI server.

It lives in its own virtual environment (`make litellm-setup` makes `.venv-litellm`; TIER_RUNNER_LITELLM
names another `litellm` executable) so its dependency pins stay out of the product's. Tests that need it
call `require_litellm()`: under `make test` (REQUIRE_LITELLM=1) a missing LiteLLM fails them, as a missing
vLLM does; a plain `pytest` skips them with the command to run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import REPO, ChildProcess, free_port

LITELLM = Path(os.environ.get("TIER_RUNNER_LITELLM") or REPO / ".venv-litellm" / "bin" / "litellm")
MODEL = "smollm2"


def require_litellm() -> None:
    """At a test module's import: fail (REQUIRE_LITELLM=1, as `make test` sets) or skip when LiteLLM is missing."""
    if LITELLM.exists():
        return
    why = f"LiteLLM is missing ({LITELLM}): run `make litellm-setup`"
    if os.environ.get("REQUIRE_LITELLM") == "1":
        pytest.fail(f"{why}; REQUIRE_LITELLM=1 (make test) does not let Tier 1 on Anthropic go untested",
                    pytrace=False)
    pytest.skip(why, allow_module_level=True)


class LiteLLMProxy(ChildProcess):
    def __init__(self, upstream_v1: str, master_key: str, root: Path):
        port = free_port()
        config = root / "litellm.yaml"
        # hosted_vllm/ makes LiteLLM call /v1/chat/completions upstream; openai/ would call the Responses API.
        config.write_text(f"""
model_list:
  - model_name: {MODEL}
    litellm_params: {{model: "hosted_vllm/tier:3", api_base: "{upstream_v1}", api_key: "none"}}
general_settings: {{master_key: "{master_key}"}}
litellm_settings: {{drop_params: true, num_retries: 0}}
""")
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR",
               "NO_DOCS": "True"}
        super().__init__([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
                         port=port, log_path=root / "litellm.log", ready_path="/health/liveliness", env=env, cwd=root)
