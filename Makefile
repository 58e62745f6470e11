# Everything sets itself up from nothing: the first target run creates .venv and installs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The benchmarks' own environment: the project plus PgQueuer (the peer they compare with) and
# py-spy, which are not dependencies of the project.
BENCH_VENV := .venv-bench
BENCH_STAMP := $(BENCH_VENV)/.installed
BENCH_ARGS ?=

.PHONY: demo test lint format chaos bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/aijobs demo

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check service tests bench
	$(BIN)/ruff format --check service tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix service tests bench
	$(BIN)/ruff format service tests bench

$(BENCH_STAMP): pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -e . pgqueuer py-spy
	touch $(BENCH_STAMP)

# About 15 minutes on 2 cores; prints one table and writes it to bench/results/ (see
# docs/performance.md). BENCH_ARGS="--runs 1 --only throughput" and the like narrow it.
bench: $(BENCH_STAMP)
	$(BENCH_VENV)/bin/python -m bench.run $(BENCH_ARGS)

chaos: $(STAMP)
	$(BIN)/pytest -q -s -m chaos -p no:cacheprovider

clean:
	rm -rf $(VENV) $(BENCH_VENV) .aijobs .mypy_cache .ruff_cache
	rm -rf clients/typescript/node_modules clients/typescript/dist clients/typescript/build-test
