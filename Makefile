# Two commands for a fresh clone (Python 3.11 + pip):
#   make run    install everything (editable) into .venv and run the default pipeline
#   make test   install the test extras too and run the test-suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CORE := core/crystal core/sim core/metrics core/train core/pipeline
DISTS := $(CORE) cli $(patsubst %/pyproject.toml,%,$(sort $(wildcard plugins/*/pyproject.toml)))
PYPROJECTS := $(addsuffix /pyproject.toml,$(DISTS))

.PHONY: run test install install-test lint typecheck bench readme clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python $(PYPROJECTS) constraints.txt
	$(PIP) install --quiet -c constraints.txt torch==2.13.0
	$(PIP) install --quiet -c constraints.txt $(addprefix -e ,$(DISTS))
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install --quiet -c constraints.txt $(foreach d,$(DISTS),-e '$(d)[test]') ruff mypy
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: $(VENV)/.installed
	$(BIN)/crystal run

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/relax_chgnet.py
	$(BIN)/python benchmarks/cli_startup.py

readme: $(VENV)/.installed
	$(BIN)/python docs/gen_plugin_table.py --write

clean:
	rm -rf $(VENV) runs .pytest_cache
