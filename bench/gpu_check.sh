#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py) on a machine that has torch, transformers, lightning and peft
# but may lack the rest and have no network: wheels in .whl/ (made by `--prepare` on a machine
# with a package index) are installed into a scratch folder first.
#
#   bench/gpu_check.sh --prepare     # here: .whl/ (deepspeed, hydra, ...) and .gpucheck/tokenizer
#   bench/gpu_check.sh [ARGS]        # there: bench/sandbox.py, then the checks; ARGS go to
#                                    # bench/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ "${1:-}" == "--prepare" ]]; then
  PY=${PYTHON:-.venv/bin/python}
  mkdir -p .whl .gpucheck
  plat=(--only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  # The versions this venv runs (pydantic and pydantic_core must match each other).
  pins=$("$PY" -c 'import importlib.metadata as m, sys
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' hjson pydantic pydantic_core \
    typing-inspection annotated-types omegaconf hydra-core antlr4-python3-runtime deepspeed)
  rm -f .whl/*.whl
  # shellcheck disable=SC2086
  "$PY" -m pip download -q --no-deps "${plat[@]}" -d .whl $(echo $pins | tr ' ' '\n' | grep -v -e antlr4 -e deepspeed)
  # shellcheck disable=SC2086
  "$PY" -m pip wheel -q --no-deps -w .whl $(echo $pins | tr ' ' '\n' | grep -e antlr4 -e deepspeed)
  "$PY" - <<'PYEOF'
from core.config import compose_config
from engines.models import resolve_model_path
from transformers import AutoTokenizer
cfg = compose_config(["model=smollm2_135m"])
AutoTokenizer.from_pretrained(resolve_model_path(cfg.model, cfg.models_dir)).save_pretrained(".gpucheck/tokenizer")
PYEOF
  du -sh .whl .gpucheck
  exit 0
fi
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl
  export PYTHONPATH=/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}
fi
# The sandbox's throughput on this machine's cores (stdlib only; issue: >= 0.25 of bare exec).
"$PY" bench/sandbox.py || echo "bench/sandbox.py failed (rc=$?)"
exec "$PY" bench/gpu_check.py "$@"
