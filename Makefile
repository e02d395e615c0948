# Two commands for a fresh machine: `make run` and `make test`. Both install first (idempotent).
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp

.PHONY: install run test test-all test-unit lint typecheck bench clean

install: $(STAMP)

# Where the environment sets PYTHONDONTWRITEBYTECODE, every process would recompile every module it
# imports; let the first import write its .pyc.
unexport PYTHONDONTWRITEBYTECODE

# uv installs the same pinned set as pip in a fraction of the time: pip spent most of CI's 90
# minutes byte-compiling all ~17,500 modules of the venv on the 2-CPU machine, where uv compiles
# none and Python compiles only what the tests import, once (hence the unexport above). torch
# comes from the CPU wheel this kind of machine keeps on disk when it is there, else through pip's
# own configuration (uv would take PyPI's CUDA build). Without uv (no registry), plain pip does
# everything.
UV_VERSION  := 0.13.9
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-cp311-*.whl))

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if $(BIN)/python -m pip install --quiet uv==$(UV_VERSION); then \
	  if [ -n "$(TORCH_WHEEL)" ]; then \
	    $(BIN)/uv pip install --quiet --python $(BIN)/python "$(TORCH_WHEEL)"; \
	  else \
	    $(BIN)/python -m pip install --quiet -c constraints.txt torch; \
	  fi && \
	  $(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -e '.[torch,tensorflow,test,dev]'; \
	else \
	  $(BIN)/python -m pip install --quiet -c constraints.txt -e '.[torch,tensorflow,test,dev]'; \
	fi
	@touch $(STAMP)

run: install
	$(BIN)/orchestrator submit jobs/cnn.yaml

# What CI runs: unit tests, tests/k8s (the operator against the API emulator), the light integration
# tests and the `smoke` tier, which proves the main path on real Ray (jobs/cnn.yaml to 0.95 on its own
# embedded Ray, a worker SIGKILL recovered, a 2-worker TensorFlow MWMS epoch, a `--backend ray` job,
# the Ray head lost, a full disk, a killed sweep driver). The other `heavy` tests (many more training
# runs) are left to `make test-all`. lint-imports first checks the layer contract (pyproject.toml,
# docs/architecture.md); --durations prints the slowest tests.
test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m "not heavy or smoke" --durations=25 tests/unit tests/integration tests/k8s

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
