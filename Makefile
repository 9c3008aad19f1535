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

# ---- Prefect operations (issue #6): a local server + worker with state under $RECSYS_HOME ----------
.PHONY: prefect-up prefect-deploy prefect-down

## start a local Prefect server (PREFECT_PORT, default 4200) and a process worker on pool `local`
prefect-up: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/prefect_up.sh

## register every deployment in prefect.yaml (prefect --no-prompt deploy --all)
prefect-deploy: setup
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/prefect_deploy.sh

## stop the worker and the server started by prefect-up
prefect-down:
	bash scripts/prefect_down.sh
