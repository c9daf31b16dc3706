# msimaging: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= 2

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,slurm]"
	touch $(STAMP)

install: $(STAMP)

## demo: phantom study -> full pipeline -> endpoints table and QC page path
demo: $(STAMP)
	$(BIN)/msimaging demo demo --cores $(CORES)

## lint: snakemake's linter on the workflow
lint: $(STAMP)
	$(BIN)/snakemake --lint --snakefile workflow/Snakefile

## test: lint, then every test (unit, io, workflow end-to-end on phantoms)
test: $(STAMP) lint
	$(BIN)/python -m pytest -q

## test-fast: unit and io tests only
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## bench: per-rule medians from Snakemake benchmark files, accuracy figures on phantoms and real data
bench: $(STAMP)
	$(BIN)/python -m msimaging.bench --cores $(CORES)

clean:
	rm -rf demo bench-results .pytest_cache
