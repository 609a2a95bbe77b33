# Two commands matter: `make demo` and `make test`. Both build .venv from scratch on a
# fresh machine (system packages gcc + libgmp-dev for py-libp2p's fastecdsa included).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# the suite runs once per seed: nothing that decides state may depend on str/bytes hash order
HASH_SEEDS ?= 0 1234

.PHONY: demo test lint fmt bench clean venv typecheck imports

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

## test: lint, the import contracts, mypy, then the whole suite (unit, property, integration with real
## processes) under each of HASH_SEEDS
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy src/ecac
	@for seed in $(HASH_SEEDS); do \
		echo "== pytest, PYTHONHASHSEED=$$seed"; \
		PYTHONHASHSEED=$$seed $(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS) || exit 1; \
	done

## imports: the import contracts of pyproject.toml (sans-I/O core and sync, layers, no cycles)
imports: $(STAMP)
	$(BIN)/lint-imports

## typecheck: mypy (strict on ecac.core and ecac.sync; see pyproject.toml)
typecheck: $(STAMP)
	$(BIN)/mypy src/ecac

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
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache src/.mypy_cache .import_linter_cache .hypothesis demo-out bench-out
