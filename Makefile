# msimaging: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORES ?= 2

.PHONY: install demo test test-fast lint bench browser screenshots clean

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

## browser: headless Chromium for the QC-page browser test (Debian package; installed when missing)
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	else \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		echo "installing chromium (apt-get) for the QC page browser test"; \
		$$SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
		|| ($$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium >/dev/null 2>&1) \
		|| echo "could not install chromium: the browser test will be skipped (it fails in CI)"; \
	fi

## test: lint, then every test (unit, io, workflow end-to-end on phantoms, QC page in a browser)
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25

## test-fast: unit and io tests only
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

## bench: per-rule medians from Snakemake benchmark files, accuracy figures on phantoms and real data
bench: $(STAMP)
	$(BIN)/python -m msimaging.bench --cores $(CORES)

## screenshots: the README's pictures of cohort.html and the viewer (docs/*.png), from a 3 subject x 3 visit
## phantom study run through the whole pipeline (needs headless Chromium: make browser)
SCREENSHOT_RESOLUTION ?= 3
screenshots: $(STAMP) browser
	rm -rf screenshots-study
	$(BIN)/msimaging phantom screenshots-study/bids --subjects 3 --sessions 3 --resolution $(SCREENSHOT_RESOLUTION) \
		--seed 18 --orientation LPS
	$(BIN)/msimaging run screenshots-study/bids screenshots-study/derivatives --cores $(CORES)
	$(BIN)/msimaging screenshots screenshots-study/derivatives --docs docs

clean:
	rm -rf demo bench-results screenshots-study .pytest_cache
