# The README's two commands, `make demo` and `make test`, work on a fresh machine:
# each runs `setup` first (venv, pinned Python packages; Kafka jars are fetched with Maven on first use).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup test test-unit lint faults fuzz demo stack-up stack-down stack-status bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[all,test]"
	touch $(STAMP)

# The test session starts its own Kafka broker, embedded ClickHouse server and PostgreSQL
# (tests/conftest.py) and stops them when it ends, also when tests fail.
test: setup
	$(BIN)/python -P -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-unit: setup
	$(BIN)/python -P -m pytest -q tests/unit

# The fault tests at the sizes of issue 11 (200k events and 10 worker kills, 5-minute warehouse outage,
# 10,000 poison messages...); `make test` runs a bounded version of each. Figures: .driftline/faults/
faults: setup
	DRIFTLINE_FAULTS=full $(BIN)/python -P -m pytest -q -p no:cacheprovider tests/faults $(PYTEST_ARGS)

# `driftline stack up`, a worker and a retrainer (logs in .driftline/demo/<model>/), then the loop on a
# simulated model with live progress, a summary and an HTML report. Flags: make demo DEMO_ARGS="--patience 2"
demo: setup
	$(BIN)/python -m driftline.demo_cli $(DEMO_ARGS)

stack-up: setup
	$(BIN)/driftline stack up

stack-down: setup
	$(BIN)/driftline stack down

stack-status: setup
	$(BIN)/driftline stack status

bench: setup
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	$(BIN)/python bench/throughput.py

# The long fuzz run of the decoders (tests/fuzz/README.md); the CI one is tests/unit/test_fuzz.py.
# make fuzz FUZZ_ARGS="--seconds 3600"   or   FUZZ_ARGS="--count 2000000 --seed 7"
FUZZ_ARGS ?= --seconds 300
fuzz: setup
	$(BIN)/python tests/fuzz/run.py $(FUZZ_ARGS)

clean:
	-$(BIN)/driftline stack down
	rm -rf .driftline

# Fast checks that CI runs first: lint and format (ruff), strict types on the pure core and the
# decisions (mypy), and the layers of docs/ARCHITECTURE.md (import-linter).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
