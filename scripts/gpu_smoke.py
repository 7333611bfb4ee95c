"""GPU smoke check: serve one model on vLLM (CUDA) through the Tier 2 runner and check a real answer.

Runs with the interpreter that has vLLM and nothing else of this project's dependencies (it needs
only pydantic, pyyaml and httpx, which vLLM brings), so it works on a GPU node where nothing can be
installed. Use scripts/gpu-smoke.sh, which skips cleanly where no CUDA device exists.

Environment: SMOKE_MODEL (a transformers folder, or an HF id already in the local HF cache; default:
the catalog's converted SmolLM2 folder), SMOKE_GPU (index, default 0), SMOKE_TIMEOUT_S (default 600).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hardware.catalog import load_catalog  # noqa: E402
from hardware.detect import detect, gib  # noqa: E402
from hardware.fit import check_fit  # noqa: E402
from hardware.profile import Device, TierPlacement  # noqa: E402
from runners.protocol import ChatCompletionRequest  # noqa: E402
from runners.procs import group_alive  # noqa: E402
from runners.vllm import VllmRunner  # noqa: E402
from runners.vllm_launch import VllmOptions  # noqa: E402


async def main() -> int:
    machine = detect()
    if not machine.gpus:
        print(f"SKIP: no CUDA device ({machine.gpu_probe})")
        return 0
    index = int(os.environ.get("SMOKE_GPU", "0"))
    model = os.environ.get("SMOKE_MODEL") or str(load_catalog().models["smollm2-135m-instruct-bf16"].source.locate())
    if "/" in model and not Path(model).exists() and model.startswith(("/", ".")):
        print(f"FAIL: model folder {model} does not exist; set SMOKE_MODEL to a transformers folder")
        return 2
    name = "smoke-model"
    placement = TierPlacement(runner="vllm", device="gpu0", model=model)
    options = VllmOptions(python=sys.executable, dtype="auto", max_model_len=2048, gpu_memory_utilization=0.5,
                          startup_timeout_s=float(os.environ.get("SMOKE_TIMEOUT_S", "600")))
    runner = VllmRunner(2, placement, options, Device(kind="cuda", index=index))
    gpu = machine.gpu(index)
    print(f"gpu: cuda:{index} {gpu.name if gpu else '?'}; model: {model}")
    need = runner.memory_need()
    for p in check_fit([need], machine, "smoke"):
        print(f"fit: {p.where}: needs {gib(p.need)} of {gib(p.capacity)}")
    started = time.monotonic()
    await runner.start()
    while runner.status().state == "starting":
        await asyncio.sleep(0.5)
    status = runner.status()
    print(f"state after {time.monotonic() - started:.1f} s: {status.state} {status.detail}")
    pgid = runner.pid
    try:
        if status.state != "ready":
            print("FAIL: vLLM did not become ready")
            return 1
        request = ChatCompletionRequest(model=name, messages=[{"role": "user", "content": "What is the capital of France?"}],
                                        temperature=0, max_tokens=32)
        t0 = time.monotonic()
        answer = await runner.complete(request)
        text = answer.choices[0].message.content or ""
        tokens = answer.usage.completion_tokens
        print(f"answer ({tokens} tokens, {tokens / (time.monotonic() - t0):.1f} tok/s): {text!r}")
        streamed = "".join([c.choices[0].delta.content or "" async for c in runner.stream(request) if c.choices])
        if "Paris" not in text or "Paris" not in streamed:
            print("FAIL: the answer does not name Paris")
            return 1
    finally:
        await runner.stop()
    if pgid and group_alive(pgid):
        print(f"FAIL: processes of group {pgid} outlived stop()")
        return 1
    print(f"PASS in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
