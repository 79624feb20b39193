"""Every bench script still runs against the current code: each one's `--smoke` (its smallest
sizes, every path it measures) in a subprocess, as `make bench-smoke` runs it. A bench that no
longer runs is a speed figure no one can measure again. Timings are never asserted: only that
the script ends well, names the machine it ran on and prints its figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, ROOT

# Lines each script prints (regexes, searched in its output): its figures and verdicts.
FIGURES = {
    "engine_overhead": [
        r"raw vllm\.LLM\.chat\s+[\d.]+ tok/s",
        r"engine layer \+ evolve\s+[\d.]+ tok/s",
        r"ratio project/raw\s+[\d.]+",
        r"batched \(\d+\)\s+[\d.]+ tok/s",
        r"one at a time\s+[\d.]+ tok/s",
    ],
    "ifd_throughput": [
        r"reference: 3 passes x batch 1, fp32\s+[\d.]+ records/s",
        r"float32\s+[\d.]+ records/s\s+ratio\s+[\d.]+",
        r"bfloat16\s+[\d.]+ records/s\s+ratio\s+[\d.]+",
        r"max relative difference vs reference: loss_a_given_q",
        r"ceiling: .* ratio <= [\d.]+",
    ],
    "sandbox": [
        r"bare in-process exec\s+[\d,]+ pairs/s",
        r"a process per program, 1 worker\s+[\d,]+ pairs/s\s+ratio [\d.]+",
        r"a process per program, 2 workers\s+[\d,]+ pairs/s\s+ratio [\d.]+",
        r"a process per batch, 1 worker\s+[\d,]+ pairs/s\s+ratio [\d.]+",
        r"floor of a process per program: .* [\d,]+ us",
    ],
    "read_records": [
        r"read_records \(now\)\s+[\d.]+s\s+[\d.]+s\s+[\d.]+",
        r"quadratic \(before\)\s+[\d.]+s\s+[\d.]+s\s+[\d.]+",
        r"at 8N, before / now: [\d.]+x",
        r"alpaca\.json .*[\d.]+s\s+[\d.]+s\s+[\d.]+",
        r"sharegpt\.jsonl .*[\d.]+s\s+[\d.]+s\s+[\d.]+",
    ],
    "demo_time": [
        r"evolve\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+",  # auto, warm, bf16, bf16 / auto
        r"total\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+[\d.]+",
        r"formats: auto: \w+ \w+",
        r"target: default demo from an empty cache <= \d+ s: \d+ s",
        r"target: rerun on a warm cache <= \d+ s: \d+ s",
    ],
    "gpu_check": [
        *(rf"PASS  {check}\s+\{{" for check in ("env", "generate", "ifd", "train_bf16")),
        r"4/4 passed or skipped",
    ],
}
# Those without a model (the sandbox, reading files) run in the fast tier.
NO_MODEL = {"sandbox", "read_records"}


def run_smoke(name: str) -> str:
    env = {
        **os.environ,
        # The model converted once, shared with the other tests and `make demo`.
        "EVOLVERS_CACHE": str(Path(MODELS_DIR).parent),
        "WANDB_MODE": "offline",
        # One thread: on shared cores a second one that waits for a busy core made these small
        # runs several times slower; the figures of a smoke run do not matter.
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, f"bench/{name}.py", "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"{name} --smoke exit {proc.returncode}:\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.mark.parametrize(
    "name",
    [n if n in NO_MODEL else pytest.param(n, marks=pytest.mark.slow) for n in FIGURES],
)
def test_bench_smoke_runs_and_names_its_machine(name):
    from engines.__main__ import machine

    out = run_smoke(name)
    (line,) = [x for x in out.splitlines() if x.startswith("machine: ")]
    # The machine as `python -m engines` reports it (CPU model and cores, native bf16), then
    # the engine and number format the bench measured.
    cpu, bf16 = machine()[:2]
    assert cpu in line and bf16 in line
    assert re.search(r"; engine: [^;]+; dtype: \S", line), line
    missing = [f for f in FIGURES[name] if not re.search(f, out)]
    assert not missing, f"{name} --smoke printed none of {missing}:\n{out[-3000:]}"


def test_every_bench_script_is_smoke_tested():
    scripts = {p.stem for p in (ROOT / "bench").glob("*.py") if not p.stem.startswith("_")}
    # cost.py measures nothing: arithmetic on a preset's sizes, tested in tests/test_cost.py.
    assert scripts - {"cost"} == set(FIGURES)
