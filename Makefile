# Set-up and the two commands a new user runs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1

.PHONY: venv system-deps demo registry test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the local CPU wheel. An unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,keras,ray]'
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	bash scripts/system-deps.sh

demo: $(STAMP) system-deps
	$(BIN)/mycelium demo $(ARGS)

registry: $(STAMP)
	$(BIN)/mycelium registry $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check mycelium registry node viz sim tests bench
	$(BIN)/ruff format --check mycelium registry node viz sim tests bench
	$(BIN)/mypy
	# Dead code vulture is sure of (unused imports, variables, unreachable code).
	$(BIN)/vulture mycelium registry node viz sim --min-confidence 61

test: system-deps lint
	$(BIN)/python -m pytest $(ARGS)

bench: $(STAMP) system-deps
	$(BIN)/python bench/registry_throughput.py

clean:
	rm -rf $(VENV) output .pytest_cache .mypy_cache .ruff_cache
