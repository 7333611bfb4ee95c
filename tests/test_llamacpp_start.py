"""Starting a Tier 3 runner (at boot or in a live swap) keeps llama.cpp and the model file off the event loop."""

from __future__ import annotations

import asyncio
import threading

from hardware.profile import load_profile
from runners.base import build_runner
from runners.llamacpp import LlamaCppRunner

PROFILE = """devices: {cpu: {kind: cpu}}
tiers:
  3: {runner: llamacpp, device: cpu, model: smollm2-135m-instruct-q4_1, threads: 2, n_ctx: 512, max_batch: 1}
"""


def test_start_resolves_the_model_file_off_the_event_loop(tmp_path, monkeypatch):
    """A first use of a catalog model joins its parts and hashes it (seconds for a large GGUF): done on the
    loop, every request in flight during a live swap would stall that long."""
    (tmp_path / "profile.yaml").write_text(PROFILE)
    source, profile = load_profile(tmp_path / "profile.yaml")
    runner = build_runner(3, profile.tiers[3], str(source), profile.devices)
    resolved_on: list[threading.Thread] = []
    real = LlamaCppRunner.model_file

    def recording(self):
        resolved_on.append(threading.current_thread())
        return real(self)

    monkeypatch.setattr(LlamaCppRunner, "model_file", recording)

    async def go() -> threading.Thread:
        await runner.start()
        try:
            assert runner.serving()
        finally:
            await runner.stop()
        return threading.current_thread()

    loop_thread = asyncio.run(go())
    assert resolved_on and loop_thread not in resolved_on, resolved_on
