# Set-up on a fresh machine is two commands: `make demo` and `make test`.
# Both create .venv and install the package with what they need when missing or when
# pyproject.toml changed (tracked by stamp files).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q

.PHONY: help test lint pytest demo bench bench-quick fixtures checkpoint-fixtures sparsecore-fixtures protos clean

help:
	@echo "make demo   - write a demo checkpoint, serve it over HTTP, send a request, stop"
	@echo "make test   - lint (ruff, mypy, import-linter) then the test suite"
	@echo "make bench  - benchmarks vs PyTorch, NumPy (and TF if .venvs/tf exists), then the sweeps"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-dev: pyproject.toml | $(PY)
	$(PIP) install -e '.[dev]'
	@touch $@

$(VENV)/.stamp-bench: pyproject.toml | $(PY)
	$(PIP) install -e '.[bench]'
	@touch $@

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

pytest: $(VENV)/.stamp-dev
	$(PY) -m pytest -q

test: lint pytest

# The demo serves a checkpoint over HTTP, so it needs the server's dependencies.
$(VENV)/.stamp-serve: pyproject.toml | $(PY)
	$(PIP) install -e '.[serve]'
	@touch $@

demo: $(VENV)/.stamp-serve
	$(PY) -m embserve.demo

# TensorFlow joins as a contestant when its venv exists (make fixtures creates it).
TF_PYTHON ?= $(wildcard .venvs/tf/bin/python)

bench: $(VENV)/.stamp-bench
	$(PY) benchmarks/run.py $(if $(TF_PYTHON),--tf-python $(TF_PYTHON))
	$(PY) benchmarks/run.py --sweep $(if $(TF_PYTHON),--tf-python $(TF_PYTHON))

bench-quick: $(VENV)/.stamp-bench
	$(PY) benchmarks/run.py --quick

# Re-creates tests/data/*.json from real TensorFlow 2.21 (in its own venv, never a dependency).
fixtures:
	test -x .venvs/tf/bin/python || ($(PYTHON) -m venv .venvs/tf && .venvs/tf/bin/pip install -q tensorflow-cpu==2.21.0)
	.venvs/tf/bin/python tools/make_fixtures.py

# Re-creates tests/data/checkpoints/ with real TensorFlow, and cross-checks embserve's writer.
checkpoint-fixtures:
	test -x .venvs/tf/bin/python || ($(PYTHON) -m venv .venvs/tf && .venvs/tf/bin/pip install -q tensorflow-cpu==2.21.0)
	.venvs/tf/bin/pip install -q google-crc32c
	.venvs/tf/bin/python tools/make_checkpoint_fixtures.py

# Re-creates tests/data/sparsecore/ (SparseCore checkpoints) with real TensorFlow 2.21.
sparsecore-fixtures:
	test -x .venvs/tf/bin/python || ($(PYTHON) -m venv .venvs/tf && .venvs/tf/bin/pip install -q tensorflow-cpu==2.21.0)
	.venvs/tf/bin/pip install -q google-crc32c
	.venvs/tf/bin/python tools/make_sparsecore_fixtures.py

# Regenerates src/embserve/checkpoint/protos/*_pb2.py(i) with a pinned protoc (grpcio-tools).
protos:
	$(PYTHON) tools/gen_protos.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
