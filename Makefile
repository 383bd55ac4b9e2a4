# Two commands for a fresh machine: `make serve` and `make test`.
# Both create .venv if it is missing and install the project into it. torch==2.13.0 goes in
# first so that the package's torch range is already satisfied (no multi-GB CUDA download on
# a CPU machine); an environment that already has torch keeps it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: serve test lint setup
setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python serve.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
