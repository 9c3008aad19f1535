# Two commands for a newcomer: `make run` (demo end to end) and `make test` (the test suite CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all bench clean

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

## generate the default data, train with Prefect + MLflow, serve the champion, query it over HTTP
run: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

## the default test suite (what .ci/run calls)
test: setup
	$(BIN)/python -m pytest

## everything, slow suites included
test-all: setup
	$(BIN)/python -m pytest -m "not gpu"

clean:
	rm -rf .recsys
