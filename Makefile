# lit_rlhf: `make demo` and `make test` install into .venv first (torch==2.13.0: the CPU wheel on CPU machines).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
FRESH ?=

.PHONY: install install-dev demo test test-slow test-all lint clean

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

demo: install
	$(PY) -m lit_rlhf demo $(if $(FRESH),--fresh,)

test: install-dev
	$(PY) -m pytest -q -m "not slow"

test-slow: install-dev
	$(PY) -m pytest -q -m slow

test-all: install-dev
	$(PY) -m pytest -q

lint: install-dev
	$(PY) -m ruff check lit_rlhf tests benchmarks train.py

clean:
	rm -rf $(VENV) .pytest_cache
