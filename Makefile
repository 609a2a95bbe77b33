# Two commands matter: `make demo` and `make test`. Both build .venv from scratch on a
# fresh machine (system packages gcc + libgmp-dev for py-libp2p's fastecdsa included).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test lint fmt bench clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py src/ecac/_native.c scripts/ensure-sysdeps.sh
	@sh scripts/ensure-sysdeps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

## demo: a local multi-node network on loopback, each node with its own RocksDB store
demo: $(STAMP)
	$(BIN)/ecac demo

## test: lint, then the whole suite (unit, property, integration with real processes)
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

fmt: $(STAMP)
	$(BIN)/ruff format src tests benchmarks

## bench: the headline benchmarks (prints numbers; not part of `make test`)
bench: $(STAMP)
	$(BIN)/ecac bench --scenario hb-chain --ops 100000 --seed 42
	$(BIN)/ecac bench --scenario concurrent --peers 8 --ops 100000 --seed 42

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis demo-out bench-out
