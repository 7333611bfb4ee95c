"""LiteLLM's proxy as a real Anthropic Messages server (POST /v1/messages) in front of a local OpenAI server.

It lives in its own virtual environment (`make litellm-setup` makes `.venv-litellm`) so its dependency
pins stay out of the product's; tests that need it skip with the command to run when it is missing.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import REPO, free_port

LITELLM = REPO / ".venv-litellm" / "bin" / "litellm"
MODEL = "smollm2"


class LiteLLMProxy:
    def __init__(self, upstream_v1: str, master_key: str, root: Path):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "litellm.log"
        config = root / "litellm.yaml"
        # hosted_vllm/ makes LiteLLM call /v1/chat/completions upstream; openai/ would call the Responses API.
        config.write_text(f"""
model_list:
  - model_name: {MODEL}
    litellm_params: {{model: "hosted_vllm/tier:3", api_base: "{upstream_v1}", api_key: "none"}}
general_settings: {{master_key: "{master_key}"}}
litellm_settings: {{drop_params: true, num_retries: 0}}
""")
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
               "LITELLM_LOG": "ERROR", "NO_DOCS": "True"}
        self.log = self.log_path.open("w")
        self.proc = subprocess.Popen([str(LITELLM), "--config", str(config), "--host", "127.0.0.1",
                                      "--port", str(self.port)], cwd=root, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/health/liveliness", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"litellm not ready after {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text()
