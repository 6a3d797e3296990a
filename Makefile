# Two commands from a clean clone:  `make demo`  and  `make test`.
# Both run scripts/setup.sh first (idempotent: instant when nothing changed).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Flags for `evo run` in the demo: the full search (300 metric calls), then a held-out test split
# of 60 examples (120 calls) instead of the default 300 (600 calls), so the run takes a few
# minutes on 2 cores. The full-size run:  make demo DEMO_ARGS="--task trec --budget 300"
# (the test split's size also moves the stratified train/val cut, so its search differs a little).
DEMO_ARGS ?= --task trec --budget 300 --n-test 60
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m 'not slow'"`.
PYTEST_ARGS ?=
# Line coverage of evo/ (pytest-cov), printed before the test summary; `make test COV=` turns it off.
COV ?= --cov=evo --cov-report=term-missing:skip-covered
# What ruff checks (all of the Python in the repository).
LINT_PATHS ?= evo evo_bench tests benchmarks scripts examples

.PHONY: setup lint demo test bench clean distclean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/evo run $(DEMO_ARGS)

# The laws, checked before the tests: the one-way layers (import-linter contract in
# pyproject.toml), no import cycle at run time, and ruff. Each runs; the target fails if any did.
lint: setup
	@status=0; \
	echo "[lint] lint-imports"; $(VENV)/bin/lint-imports || status=1; \
	echo "[lint] scripts/import_cycles.py"; $(PY) scripts/import_cycles.py || status=1; \
	echo "[lint] ruff check $(LINT_PATHS)"; $(VENV)/bin/ruff check $(LINT_PATHS) || status=1; \
	exit $$status

test: setup lint
	$(PY) -m pytest -q $(COV) $(PYTEST_ARGS)

# Kernel benchmarks: one table of ratios against the references (gepa, DEAP, dspy, Python loops).
# BENCH_ARGS="--quick" for a short smoke run.
BENCH_ARGS ?=
bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# Build artefacts and test caches; keeps .venv and ~/.cache/evo (models, data, wheels).
clean:
	rm -rf build dist *.egg-info .pytest_cache .benchmarks .hypothesis .ruff_cache .import_linter_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Also removes the virtual environment (the next setup reinstalls it, reusing the cached wheel).
distclean: clean
	rm -rf $(VENV)
