# Two commands for a fresh clone (Python 3.11 + pip):
#   make run    install everything (editable) into .venv and run the default pipeline
#   make test   install the test extras too and run the test-suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
CORE := core/crystal core/sim core/metrics core/train core/pipeline core/report
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
	@# headless browser for core/report's test (Debian's chromium); skipped with its reason when absent
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
		echo "note: chromium not installed (needs root and apt-get); core/report's browser test will be skipped"
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
