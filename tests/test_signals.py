"""SIGTERM to a real `python run.py` during generation (the default engine) and during training:
the job stops within 10 s, exits non-zero, finishes its W&B run, and a rerun resumes."""

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.records import make_record
from tests.conftest import MODELS_DIR, ROOT, inspect_wandb, run_cli

pytestmark = pytest.mark.slow

# The promise of the README: a stopped job is gone within this many seconds of the signal.
STOP_WITHIN_S = 10


def _terminate_when(args: list[str], ready: Callable[[], bool], log: Path) -> tuple[int, float]:
    """Start run.py, send SIGTERM (to the job only, as a scheduler would) once `ready()`, and
    return its exit code and the seconds it took to exit after the signal."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, stdout=out, stderr=out
        )
        try:
            deadline = time.time() + 300
            while not ready():
                assert proc.poll() is None, (
                    "the job ended before it could be stopped:\n" + (log.read_text()[-3000:])
                )
                assert time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError("SIGTERM did not stop the job in 60 s") from None
            return rc, time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _lines(pattern: str, root: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in root.glob(pattern))


def _assert_stopped(rc: float, took: float, run_dir: Path, stage: str, log: Path) -> None:
    assert rc == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert took <= STOP_WITHIN_S, f"{took:.1f}s after SIGTERM"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stage"] == stage
    assert summary["signal"] == "SIGTERM"
    run = inspect_wandb(run_dir)["summary"]  # finished, and marked as not successful
    assert run["state"] == "failed" and run["exit_code"] != 0
    assert run["summary"]["status"] == "interrupted"
    assert "Traceback" not in log.read_text()


def test_sigterm_during_generation_stops_promptly_and_resumes(tmp_path, bundled_model_dir):
    cache = tmp_path / "cache"
    args = [
        "engine=auto",  # the default: vLLM where it imports
        "stages=[evolve]",
        "rounds=1",
        "data.limit=6",
        "engine.chunk_size=1",
        "generation.evolve.max_tokens=48",
        f"cache_dir={cache}",
        f"models_dir={MODELS_DIR}",
    ]
    log = tmp_path / "killed.log"
    rc, took = _terminate_when(
        [*args, f"hydra.run.dir={tmp_path}/killed"],
        lambda: _lines("steps/evolve_*/*/partial.jsonl", cache) >= 1,
        log,
    )
    _assert_stopped(rc, took, tmp_path / "killed", "evolve", log)
    done = _lines("steps/evolve_*/*/partial.jsonl", cache)
    assert 1 <= done < 6

    res = run_cli([*args, f"hydra.run.dir={tmp_path}/resumed"])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert f"resuming, {done} of 6 already done" in res.stdout + res.stderr
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["engine/prompts"] == 6 - done


def test_sigterm_during_training_stops_promptly_and_resumes(tmp_path, bundled_model_dir):
    data = tmp_path / "sft.jsonl"
    records = [
        make_record(f"r{i}", f"Write the number {i} in words.", "", f"The number is {i}.")
        for i in range(16)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cache = tmp_path / "cache"
    args = [
        "stages=[train]",
        "data=file",
        f"data.path={data}",
        "train.max_steps=6",
        "train.save_every_n_steps=2",
        "train.cutoff_len=64",
        f"cache_dir={cache}",
        f"models_dir={MODELS_DIR}",
    ]
    log = tmp_path / "killed.log"
    rc, took = _terminate_when(
        [*args, f"hydra.run.dir={tmp_path}/killed"],
        lambda: any(cache.glob("train/*/checkpoints/last.ckpt")),
        log,
    )
    _assert_stopped(rc, took, tmp_path / "killed", "train", log)
    assert not any(cache.glob("train/*/hf/config.json"))  # stopped before the export

    res = run_cli([*args, f"hydra.run.dir={tmp_path}/resumed"])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["train/resumed_from_step"] >= 2 and summary["train/steps"] == 6
