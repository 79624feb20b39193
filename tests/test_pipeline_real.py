"""The pipeline end to end with the real bundled model: outputs, cache hits, shared prefixes,
SIGKILL and resume, sweeps with a failing job, and the vLLM engine."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.runner import Run
from tests.conftest import MODELS_DIR, ROOT, compose_cfg, run_cli

pytestmark = pytest.mark.slow

SHORT = ["generation.evolve.max_tokens=48", "generation.greedy.max_tokens=48"]


def _cfg(tmp_path, *extra):
    return compose_cfg(
        [
            "engine=hf",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "stages=[evolve,respond,report]",
            *SHORT,
            *extra,
        ]
    )


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rerun_makes_no_model_call_and_prefixes_are_shared(tmp_path, bundled_model_dir):
    one = Run(_cfg(tmp_path, "rounds=1", "data.limit=4"), tmp_path / "one").run()
    assert one["engine/prompts"] == 8  # 4 evolutions + 4 responses
    assert one["round_1/evolve/attempted"] == 4 and one["cache/hits"] == 0
    evolved = _lines(tmp_path / "one" / "round_1" / "evolved.jsonl")
    assert all(r["meta"]["model"] == "smollm2_135m" and r["meta"]["raw"] for r in evolved)

    again = Run(_cfg(tmp_path, "rounds=1", "data.limit=4"), tmp_path / "again").run()
    assert again["engine/prompts"] == 0 and again["cache/hits"] == again["cache/steps"] == 2
    for f in ("evolved.jsonl", "responded.jsonl"):
        assert (tmp_path / "one" / "round_1" / f).read_bytes() == (
            tmp_path / "again" / "round_1" / f
        ).read_bytes()

    # A job with the same model and seeds but more rounds reuses round 1 and pays for round 2.
    two = Run(_cfg(tmp_path, "rounds=2", "data.limit=4"), tmp_path / "two").run()
    parsed = two["round_1/evolve/parsed"]
    assert two["engine/prompts"] == 2 * parsed  # round-2 evolutions + their responses only
    assert two["cache/hits"] == 2


@pytest.mark.heavy
def test_sigkill_mid_generation_then_resume(tmp_path, bundled_model_dir):
    cache = tmp_path / "cache"
    args = [
        "engine=hf",
        "stages=[evolve]",
        "rounds=1",
        "data.limit=8",
        "engine.chunk_size=1",
        "generation.evolve.max_tokens=32",
        f"cache_dir={cache}",
        f"models_dir={MODELS_DIR}",
    ]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args, f"hydra.run.dir={tmp_path}/killed"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    partial = None
    while time.time() < deadline:
        found = list(cache.glob("steps/*/*/partial.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            partial = found[0]
            break
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    assert partial is not None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = [json.loads(x)["id"] for x in partial.read_text().splitlines()]  # all whole
    assert 2 <= len(done_before) < 8
    assert not (tmp_path / "killed" / "round_1" / "evolved.jsonl").exists()

    res = run_cli([*args, f"hydra.run.dir={tmp_path}/resumed"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resuming, {len(done_before)} of 8 already done" in res.stdout + res.stderr
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["engine/prompts"] == 8 - len(done_before)
    assert len(_lines(tmp_path / "resumed" / "round_1" / "evolved.jsonl")) == 8
    assert not list(tmp_path.rglob("*.tmp"))


def test_sweep_runs_other_jobs_when_one_lacks_weights(tmp_path, bundled_model_dir):
    res = run_cli(
        [
            "-m",
            "model=smollm2_135m,qwen2.5_0.5b",
            "engine=hf",
            "data.limit=2",
            "rounds=1",
            "stages=[evolve,respond,report]",
            *SHORT,
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        env={"HF_HUB_OFFLINE": "1"},
    )
    out = res.stdout + res.stderr
    assert res.returncode == 1 and "Traceback" not in out, out[-3000:]
    ok = json.loads((tmp_path / "sweep" / "0" / "summary.json").read_text())
    failed = json.loads((tmp_path / "sweep" / "1" / "summary.json").read_text())
    assert ok["status"] == "ok" and ok["round_1/evolve/attempted"] == 2
    assert failed["status"] == "failed"
    assert "Qwen/Qwen2.5-0.5B-Instruct" in failed["error"] and "model.path" in failed["error"]
    assert "1 job(s) failed" in out


@pytest.mark.heavy
def test_default_pipeline_with_the_vllm_engine(tmp_path, bundled_model_dir):
    """`python run.py engine=vllm`: the default stages up to training, judges and top-1 probes
    through vLLM."""
    res = run_cli(
        [
            "engine=vllm",
            "rounds=1",  # rounds chain: tests/test_pipeline_fake.py (and the real resume test)
            "data.limit=4",
            "train.max_steps=2",  # training itself is tested in test_training.py
            # lm-eval on vLLM and the evaluate stage from the command line are tested in
            # test_evaluation.py, the pairwise judge in test_arms.py and test_pairwise.py: each
            # would start vLLM once more here.
            "eval.tasks=[]",
            "eval.pairwise.enabled=false",
            *SHORT,
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            f"hydra.run.dir={tmp_path}/run",
        ],
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["engine"] == "vllm" and s["round_1/evolve/attempted"] == 4
    p1 = s["round_1/evolve/parsed"]
    # evolve 4; then per evolved record: a response, two judges, one top-1 probe
    assert s["engine/prompts"] == 4 + 4 * p1
    assert s["train/steps"] == 2 and (tmp_path / "run" / "train" / "hf" / "config.json").is_file()
    assert "round_1/evolve/parsed" in res.stdout  # the printed summary
    for r, n in ((1, p1),):
        assert s[f"round_{r}/score/confidence/scored"] == n
        assert s[f"round_{r}/score/ifd/ifd_null"] + s[f"round_{r}/score/ifd/skipped_no_output"] < n
    selected = _lines(tmp_path / "run" / "selected.jsonl")
    assert s["filter/set"] == "round_1" and len(selected) == s["filter/kept"] >= 1
    for r in (1,):
        m = json.loads((tmp_path / "run" / f"round_{r}" / "metrics.json").read_text())
        assert m["evolve"]["attempted"] == m["evolve"]["parsed"] + m["evolve"]["failed"]
