#!/usr/bin/env bash
# GPU smoke check (a few minutes): Tier 2's vLLM runner serves one model on CUDA device SMOKE_GPU (0)
# and must answer "Paris". Needs only a Python that has vLLM (VLLM_PYTHON, else .venv-vllm/bin/python,
# else python3); installs nothing. Exit codes: 0 PASS, 77 SKIP (no CUDA device: nothing was checked, so
# nothing may count it as a pass; 77 is automake's "skipped"), anything else FAIL.
#   SMOKE_MODEL=/models/some-instruct-folder scripts/gpu-smoke.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "SKIP: no CUDA device (nvidia-smi absent or sees no GPU)"
    exit 77
fi
PY="${VLLM_PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv-vllm/bin/python ]; then PY=.venv-vllm/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import vllm" >/dev/null 2>&1; then
    echo "FAIL: $PY cannot import vllm; set VLLM_PYTHON to an interpreter that has vLLM"
    exit 2
fi
exec timeout "${SMOKE_TIMEOUT_S:-900}" "$PY" scripts/gpu_smoke.py
