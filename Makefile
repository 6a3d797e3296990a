# Two commands from a clean clone:  `make demo`  and  `make test`.
# Both run scripts/setup.sh first (idempotent: instant when nothing changed).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Flags for `evo run` in the demo; override e.g. `make demo DEMO_ARGS="--task trec --budget 100"`.
DEMO_ARGS ?= --task trec --budget 300
# Extra pytest arguments, e.g. `make test PYTEST_ARGS="-m 'not slow'"`.
PYTEST_ARGS ?=
# Line coverage of evo/ and embeddings/ (pytest-cov), printed before the test summary;
# `make test COV=` turns it off.
COV ?= --cov=evo --cov=embeddings --cov-report=term-missing:skip-covered

.PHONY: setup demo test bench clean distclean

setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/evo run $(DEMO_ARGS)

test: setup
	$(PY) -m pytest -q $(COV) $(PYTEST_ARGS)

# Kernel benchmarks: one table of ratios against the references (gepa, DEAP, dspy, Python loops).
# BENCH_ARGS="--quick" for a short smoke run.
BENCH_ARGS ?=
bench: setup
	$(PY) benchmarks/run.py $(BENCH_ARGS)

# Build artefacts and test caches; keeps .venv and ~/.cache/evo (models, data, wheels).
clean:
	rm -rf build dist *.egg-info .pytest_cache .benchmarks .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# Also removes the virtual environment (the next setup reinstalls it, reusing the cached wheel).
distclean: clean
	rm -rf $(VENV)
