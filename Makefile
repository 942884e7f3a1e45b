# Two commands on a fresh machine with Python 3.11+ and make: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test lint typecheck unit integration property bench loadtest reliability clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,benchmarks]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/benefits demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/pytest

unit: install
	$(BIN)/pytest -m "not integration and not slow"

# The property suites (hypothesis) with many more examples than `make test` runs.
property: install
	$(BIN)/pytest -q --hypothesis-profile=long -k "properties"

bench: install
	$(BIN)/python -m benchmarks.ranking
	$(BIN)/python -m benchmarks.stream
	$(BIN)/python -m benchmarks.training

loadtest: install
	$(BIN)/benefits loadtest

reliability: install
	$(BIN)/benefits reliability

clean:
	rm -rf $(VENV) var build *.egg-info
