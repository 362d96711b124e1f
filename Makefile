# The two commands of the quick start are `make demo` and `make test`; both bootstrap what
# they need on a fresh machine (.venv, Python packages, and through apt when running as root,
# the system packages PostgreSQL, Prometheus and Alertmanager).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck pytest bench bench-products soak sysdeps-postgres sysdeps-ops sysdeps-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

sysdeps-postgres:
	@sh tools/ensure-system-packages.sh postgres

# The demo runs without Prometheus and Alertmanager when they cannot be installed (not root).
sysdeps-ops:
	@sh tools/ensure-system-packages.sh --optional prometheus alertmanager

sysdeps-all:
	@sh tools/ensure-system-packages.sh postgres prometheus alertmanager

demo: sysdeps-postgres sysdeps-ops $(STAMP)
	$(BIN)/fleet-exporter demo $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: sysdeps-all $(STAMP)
	$(BIN)/pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

bench: sysdeps-postgres $(STAMP)
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-products: sysdeps-postgres $(STAMP)
	$(BIN)/python -m bench.products $(BENCH_PRODUCTS_ARGS)

soak: sysdeps-postgres $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
