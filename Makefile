# Two commands matter: `make demo` and `make test`. Both build .venv from scratch on a
# fresh machine (system packages gcc + libgmp-dev for py-libp2p's fastecdsa included).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
# the whole suite runs under the first seed, and the layers that decide state (core, sync, store, the
# simulated network) again under each further one: nothing there may depend on str/bytes hash order
HASH_SEEDS ?= 0 1234
STATE_TESTS ?= tests/core tests/sync tests/store tests/sim

.PHONY: demo test lint fmt bench clean venv typecheck imports redteam interop-deps

venv: $(STAMP)

$(STAMP): pyproject.toml setup.py src/ecac/_native.c scripts/ensure-sysdeps.sh
	@sh scripts/ensure-sysdeps.sh
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

## interop-deps: the pinned npm packages of the js-libp2p interop peer (interop/js, tests/interop);
## skipped with a note when node or npm is missing (tests/interop then fails and says what to install)
JS_DEPS := interop/js/node_modules/.package-lock.json
interop-deps: $(JS_DEPS)

$(JS_DEPS): interop/js/package-lock.json
	@if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then \
		npm ci --prefix interop/js --ignore-scripts --no-audit --no-fund; \
	else echo "node/npm not found: tests/interop will fail (install Node.js >= 20 and npm)"; fi

## demo: a local multi-node network on loopback, each node with its own RocksDB store
demo: $(STAMP)
	$(BIN)/ecac demo

## test: lint, the import contracts, mypy, then the whole suite (unit, property, integration with real
## processes, the browser and js-libp2p interop tests) under the first of HASH_SEEDS, and STATE_TESTS
## under the others
test: $(STAMP) interop-deps
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy src/ecac
	@first=1; for seed in $(HASH_SEEDS); do \
		if [ $$first = 1 ]; then what=""; else what="$(STATE_TESTS)"; fi; first=0; \
		echo "== pytest, PYTHONHASHSEED=$$seed $${what:-(all)}"; \
		PYTHONHASHSEED=$$seed $(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS) $$what || exit 1; \
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

## redteam: the attacks of issue 10 against real node processes (not part of `make test`); prints one
## line per attack (status latency, RSS, honest peer converged, verify-store)
redteam: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m redteam $(PYTEST_ARGS) tests/redteam

## bench: the headline benchmarks (prints numbers; not part of `make test`)
bench: $(STAMP)
	$(BIN)/ecac bench --scenario hb-chain --ops 100000 --seed 42
	$(BIN)/ecac bench --scenario concurrent --peers 8 --ops 100000 --seed 42

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache src/.mypy_cache .import_linter_cache .hypothesis demo-out bench-out interop/js/node_modules
