"""What the benchmarks share beyond the tests' subprocess helpers (tests/conftest.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import ChildProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def start_stub(root: Path) -> ChildProcess:
    """The fixed-answer upstream (benchmarks/openai_stub.py), started and ready; its OpenAI base is `.base_url`/v1."""
    port = free_port()
    stub = ChildProcess([sys.executable, str(ROOT / "benchmarks" / "openai_stub.py"), "--port", str(port)],
                        port=port, log_path=root / "stub.log", ready_path="/v1/models")
    try:
        stub.wait_ready()
    except BaseException:
        stub.stop()
        raise
    return stub


def stub_profile(path: Path, upstream: str) -> Path:
    """A profile whose Tier 1 is the hosted runner pointed at `upstream`, keyless, at $1 per million tokens."""
    path.write_text(f"devices: {{cpu: {{kind: cpu}}}}\ntiers:\n  1: {{runner: hosted, model: stub, base_url: "
                    f"\"{upstream}\", api_key_env: null, price: {{input_per_m: 1, output_per_m: 1}}}}\n")
    return path
