# Two commands for a fresh machine: `make run` and `make test`. Both install first (idempotent).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install run test test-all test-unit lint typecheck bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[torch,test,dev]'
	@touch $(STAMP)

run: install
	$(BIN)/orchestrator submit jobs/cnn.yaml

# Unit tests and the integration tests that need no training run. The integration tests marked
# `heavy` (real Ray training runs: jobs/cnn.yaml accuracy, fault injection, Prometheus end to end)
# need more time than CI has on the 2-CPU machine it runs on; `make test-all` runs everything.
# tests/k8s (the operator against the API emulator) take about 6.5 minutes there.
test: install
	$(BIN)/python -m pytest -m "not heavy" tests/unit tests/integration tests/k8s

test-all: install
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest tests/unit

lint: install
	$(BIN)/ruff check orchestrator tests bench
	$(BIN)/ruff format --check orchestrator tests bench

typecheck: install
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
