# Two commands do all the set-up on a fresh machine:
#   make demo   the main job: the full demo on the local Azure emulator and Azurite
#   make test   every check: ruff, mypy, import layering, the tests, the infrastructure checks
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INFRA_VENV := .venv-infra
STAMP := $(VENV)/.installed
INFRA_STAMP := $(INFRA_VENV)/.installed
NODE_STAMP := node_modules/.installed

.PHONY: setup demo test lint typecheck layers unit infra clean

setup: $(STAMP) $(NODE_STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Azurite (the Azure Storage emulator) comes from npm; tests and the demo start it themselves.
$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# checkov pins old versions of many packages: it lives in its own environment so it never shapes ours.
$(INFRA_STAMP): requirements-infra.txt
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/pip install --quiet --upgrade pip
	$(INFRA_VENV)/bin/pip install --quiet -r requirements-infra.txt
	touch $@

demo: setup
	$(BIN)/rdp-remediate demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

layers: $(STAMP)
	$(BIN)/lint-imports

unit: setup
	$(BIN)/pytest -n 2

infra: $(INFRA_STAMP) $(STAMP)
	$(BIN)/python -m tests.infra.checkov_gate $(INFRA_VENV)/bin/checkov infra

test: lint typecheck layers unit infra

clean:
	rm -rf $(VENV) $(INFRA_VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
