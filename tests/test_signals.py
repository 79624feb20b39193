"""SIGTERM to a real `python run.py` during generation (the default engine) and during training,
Ctrl-C to its process group: the job stops within 10 s, exits non-zero, finishes its W&B run, and a
rerun resumes. And the parts: a lost signal exception is raised again at the next chunk, a second
signal while unwinding exits at once."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core.records import make_record
from tests.conftest import MODELS_DIR, ROOT, inspect_wandb, run_cli

# The promise of the README: a stopped job is gone within this many seconds of the signal.
STOP_WITHIN_S = 10


def _terminate_when(
    args: list[str], ready: Callable[[], bool], log: Path, sig: int = signal.SIGTERM
) -> tuple[int, float]:
    """Start run.py, send `sig` once `ready()`, and return its exit code and the seconds it took
    to exit after the signal. SIGTERM goes to the job only, as a scheduler sends it; SIGINT to
    its whole process group, as a terminal's Ctrl-C does."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=ROOT,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        try:
            deadline = time.time() + 300
            while not ready():
                assert proc.poll() is None, (
                    "the job ended before it could be stopped:\n" + (log.read_text()[-3000:])
                )
                assert time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            if sig == signal.SIGINT:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            t0 = time.monotonic()
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"signal {sig} did not stop the job in 60 s") from None
            return rc, time.monotonic() - t0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _evolve_args(engine: str, cache: Path) -> list[str]:
    """A short evolve-only job that saves every prompt's result as its own chunk."""
    return [
        f"engine={engine}",
        "stages=[evolve]",
        "rounds=1",
        "data.limit=6",
        "engine.chunk_size=1",
        "generation.evolve.max_tokens=48",
        f"cache_dir={cache}",
        f"models_dir={MODELS_DIR}",
    ]


def _evolved(cache: Path) -> int:
    return _lines("steps/evolve_*/*/partial.jsonl", cache)


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


@pytest.mark.heavy
@pytest.mark.slow
def test_sigterm_during_vllm_generation_stops_promptly(tmp_path, bundled_model_dir):
    """vLLM runs in engine processes of its own: they are shut down within the deadline too.
    (Resuming after a stop is checked on the cheaper hf engine below.)"""
    cache = tmp_path / "cache"
    args = _evolve_args("auto", cache)  # the default engine: vLLM where it imports
    log = tmp_path / "killed.log"
    rc, took = _terminate_when(
        [*args, f"hydra.run.dir={tmp_path}/killed"], lambda: _evolved(cache) >= 1, log
    )
    _assert_stopped(rc, took, tmp_path / "killed", "evolve", log)
    assert 1 <= _evolved(cache) < 6
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.heavy
@pytest.mark.slow
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
        "train.max_steps=4",
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
    assert summary["train/resumed_from_step"] >= 2 and summary["train/steps"] == 4


def test_a_lost_signal_exception_is_raised_again_at_the_next_chunk(tmp_path, monkeypatch):
    from core import signals
    from core.cache import StepCache

    computed = []

    def compute(ids):
        computed.extend(ids)
        if len(computed) == 2:  # a signal arrives and its exception is swallowed inside a chunk
            signals._received.append(signal.SIGTERM)
        return [{"v": i} for i in ids]

    monkeypatch.setattr(signals, "_received", [])
    monkeypatch.setattr(signals, "_unwinding", [])
    cache = StepCache(tmp_path)
    with pytest.raises(signals.Interrupted) as exc:
        cache.run("step", {}, [f"i{k}" for k in range(6)], compute, chunk_size=2)
    assert exc.value.exit_code == 143 and computed == ["i0", "i1"]  # no further chunk
    signals.unwinding()  # once the job handles it, unwinding code is not interrupted again
    signals.check_interrupt()


def test_a_second_signal_while_unwinding_exits_at_once(tmp_path):
    script = tmp_path / "slow_cleanup.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from core.signals import Interrupted, stop_on_signals\n"
        "stop_on_signals()\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "except Interrupted:\n"
        "    print('unwinding', flush=True)\n"
        "    time.sleep(60)  # a cleanup that hangs\n"
    )
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "unwinding"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        proc.kill()


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_stops_the_job_and_a_rerun_resumes(tmp_path, bundled_model_dir):
    """What a terminal does: SIGINT to every process of the job. Then the same command again."""
    cache = tmp_path / "cache"
    args = _evolve_args("hf", cache)
    log = tmp_path / "run.log"
    rc, took = _terminate_when(
        [*args, f"hydra.run.dir={tmp_path}/run"], lambda: _evolved(cache) >= 1, log, signal.SIGINT
    )
    assert rc == 128 + signal.SIGINT, log.read_text()[-3000:]
    assert took <= STOP_WITHIN_S
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGINT"
    assert inspect_wandb(tmp_path / "run")["summary"]["state"] == "failed"
    done = _evolved(cache)
    assert 1 <= done < 6

    res = run_cli([*args, f"hydra.run.dir={tmp_path}/resumed"])
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert f"resuming, {done} of 6 already done" in res.stdout + res.stderr
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["engine/prompts"] == 6 - done
