# Two commands on a fresh machine with Python 3.11+ and make: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install chromium demo test lint typecheck unit integration property bench loadtest reliability screenshots clean

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

# tests/browser drive Debian's chromium through Playwright (`playwright install` cannot download its own
# browser here). Installed when missing; needs root (CI runs as root), a no-op where it is already there.
CHROMIUM := /usr/bin/chromium

chromium:
	@test -x $(CHROMIUM) || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; }

test: install chromium lint typecheck
	$(BIN)/pytest

# Regenerate docs/console/*.png from the browser tests.
screenshots: install chromium
	$(BIN)/pytest -q tests/browser -k every_page --console-screenshots docs/console

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
