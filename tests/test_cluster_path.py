"""The cluster path's defects, each on the CPU: resolvers in a worker that never runs run.py, the
job folder of a multi-task SLURM job, a sweep job's child processes, the world size of several
nodes, the followers' timeout, checkpoints and the export's dtype, weights resolved before the
first stage, one W&B run per run folder, the rank-averaged loss, the GPU stack's pins."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from core.errors import ConfigError, UserFacingError
from tests.conftest import MODELS_DIR, ROOT, compose_cfg, run_cli


def test_the_bundled_resolver_is_registered_by_importing_the_config_module():
    """A submitit worker unpickles run.py's task function without running run.py's module code:
    `data=tiny` must resolve there (before, only run.py registered `bundled`)."""
    code = (
        "import core.config\n"
        "from omegaconf import OmegaConf\n"
        "print(OmegaConf.create({'p': '${bundled:seeds/tiny.jsonl}'}).p)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().endswith("tiny.jsonl") and Path(out.stdout.strip()).is_file()


def _run_dir(env: dict[str, str]) -> str:
    from hydra import compose, initialize_config_dir

    from core.config import CONF_DIR

    old = dict(os.environ)
    os.environ.update(env)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", return_hydra_config=True)
            return str(cfg.hydra.run.dir)
    finally:
        os.environ.clear()
        os.environ.update(old)


def test_every_task_of_a_slurm_job_resolves_the_same_run_folder(monkeypatch):
    """Each task of `srun python run.py ...` composes the config itself: with the run folder
    named by the time, followers waited in a folder of their own second."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    plain = _run_dir({})
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", plain)
    task0 = _run_dir({"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0"})
    task1 = _run_dir({"SLURM_JOB_ID": "4242", "SLURM_PROCID": "1"})
    assert task0 == task1 == "outputs/slurm-4242"


def test_a_sweep_jobs_children_get_the_jobs_own_overrides_without_the_sweep():
    from run import child_argv

    argv = ["-m", "--config-name", "config", "model=a,b", "seed=0", "hydra.verbose=true"]
    assert child_argv(argv, ["model=a", "seed=0"]) == [
        "--config-name",
        "config",
        "model=a",
        "seed=0",
    ]
    assert child_argv(["--multirun", "-cn=config", "x=1,2"], ["x=1"]) == ["-cn=config", "x=1"]


def test_a_sweep_job_pins_its_childrens_run_folder_for_its_lifetime(monkeypatch):
    """What Lightning's launcher reads when it starts a device's process: `sys.argv` and
    HydraConfig's run.dir. Both name this job while it runs, and are restored after it."""
    from hydra.types import RunMode

    from run import children_join_this_job

    hc = OmegaConf.create(
        {
            "mode": RunMode.MULTIRUN,
            "run": {"dir": "outputs/the-time-now"},
            "runtime": {"output_dir": "/sweep/1"},
            "overrides": {"task": ["model=b", "seed=0"]},
        }
    )
    OmegaConf.set_readonly(hc, True)
    monkeypatch.setattr(sys, "argv", ["run.py", "-m", "model=a,b", "seed=0"])
    with children_join_this_job(hc):
        assert sys.argv == ["run.py", "model=b", "seed=0"]
        assert hc.run.dir == "/sweep/1"
    assert sys.argv == ["run.py", "-m", "model=a,b", "seed=0"]
    assert hc.run.dir == "outputs/the-time-now"


@pytest.mark.heavy
@pytest.mark.slow
def test_two_process_ddp_in_a_sweep_job(tmp_path):
    """`-m ... train.strategy=ddp train.devices=2` with a sweep folder whose interpolation differs
    at every resolution: before, rank 1 re-ran the sweep (`-m`) in a new sweep folder and waited
    there forever while rank 0 waited for it."""
    data = tmp_path / "sft.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"Say {i} in words.", "output": f"It is {i}."}) + "\n"
            for i in range(8)
        )
    )
    sweep = tmp_path / "multirun"
    proc = run_cli(
        [
            "-m",
            "seed=0",
            "stages=[train]",
            "data=file",
            f"data.path={data}",
            "train=cpu_tiny",
            "train.strategy=ddp",
            "train.devices=2",
            "train.max_steps=1",
            "train.micro_batch_size=2",
            "train.effective_batch_size=4",
            "train.cutoff_len=64",
            "train.follower_timeout_min=2",
            "engine=hf",
            "logger=none",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            f"hydra.sweep.dir={sweep}/" + "${now:%H-%M-%S-%f}",
        ],
        timeout=480,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    (job,) = [p.parent for p in sweep.glob("*/0/summary.json")]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["train/world_size"] == 2
    assert len(list(sweep.iterdir())) == 1  # no second sweep folder of a child's
    rank1 = (job / "train_ddp_process_1.log").read_text()
    assert "rank 1: waiting for rank 0" in rank1


def test_the_world_counts_every_node():
    """2 nodes x 8 GPUs: 16 processes, so half the accumulation of one node (before,
    `train.devices=8` ignored num_nodes and trained at twice the effective batch)."""
    from training.run import world_size

    cfg = OmegaConf.create({"devices": 8, "num_nodes": 2})
    assert world_size(cfg) == 16
    assert world_size(OmegaConf.create({"devices": "auto", "num_nodes": 3})) == (
        max(1, torch.cuda.device_count()) * 3
    )


def test_a_follower_stops_when_the_leader_falls_silent(tmp_path):
    from training import ranks

    t0 = time.monotonic()
    with pytest.raises(UserFacingError, match="rank 0 has not been heard from"):
        ranks.wait_for_leader(tmp_path, timeout_min=0.5 / 60, poll_s=0.05)
    assert time.monotonic() - t0 < 30


def test_a_beating_leader_keeps_its_followers_waiting(tmp_path):
    import threading

    from training import ranks

    ranks.start_heartbeat(tmp_path, every_s=0.05)
    try:
        first = ranks.last_beat(tmp_path)
        assert first is not None
        timer = threading.Timer(1.5, ranks.announce, args=(tmp_path, "train"))
        timer.start()
        # The timeout (0.6 s) is shorter than the wait (1.5 s): only the beats keep it going.
        state = ranks.wait_for_leader(tmp_path, timeout_min=0.01, poll_s=0.05)
        assert state["state"] == "train" and ranks.last_beat(tmp_path) > first
    finally:
        ranks.stop_heartbeat(tmp_path)


def test_follow_reads_the_followers_timeout(tmp_path, monkeypatch):
    from training import ranks, stages

    seen = {}

    def wait(run_dir, timeout_min, poll_s=1.0):
        seen["timeout"] = timeout_min
        return {"state": "done"}

    monkeypatch.setattr(ranks, "wait_for_leader", wait)
    ctx = type("Ctx", (), {"dir": tmp_path, "cfg": compose_cfg(["train.follower_timeout_min=7"])})
    assert stages.follow(ctx)["status"] == "ok" and seen["timeout"] == 7


def test_checkpoints_by_wall_clock_and_the_exports_dtype():
    from datetime import timedelta

    from training.run import checkpoint_every, export_dtype

    paper = compose_cfg(["train=paper"]).train
    assert paper.gradient_checkpointing is True
    assert checkpoint_every(paper) == {"train_time_interval": timedelta(minutes=30)}
    assert checkpoint_every(compose_cfg(["train=cpu_tiny"]).train) == {"every_n_train_steps": 2}
    assert export_dtype("auto", "bf16-mixed") == torch.bfloat16
    assert export_dtype("auto", "16-mixed") == torch.float16
    assert export_dtype("auto", "32-true") == torch.float32
    assert export_dtype("float32", "bf16-mixed") == torch.float32
    with pytest.raises(ConfigError, match="export_dtype"):
        export_dtype("int8", "bf16-mixed")


def test_the_export_is_written_in_the_dtype_asked(tmp_path, bundled_model_dir):
    from transformers import AutoModelForCausalLM

    from engines.hf import load_tokenizer
    from training.run import _write_export

    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir, dtype=torch.float32)
    module = type("M", (), {"model": model})()
    tokenizer = load_tokenizer(bundled_model_dir)
    _write_export(module, tokenizer, tmp_path / "hf", None, torch.bfloat16)
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert next(saved.parameters()).dtype == torch.bfloat16
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["dtype"] == "bfloat16"


def test_gradient_checkpointing_is_enabled_on_the_student(bundled_model_dir):
    from training.module import SFTModule

    cfg = compose_cfg(["train=cpu_tiny", "train.gradient_checkpointing=true"]).train
    model = SFTModule(bundled_model_dir, cfg, 1).build_model()
    assert model.is_gradient_checkpointing and model.config.use_cache is False


def test_the_loss_is_averaged_over_ranks(monkeypatch, bundled_model_dir):
    """`train/loss` was rank 0's micro-batch alone: logged with sync_dist when ranks > 1."""
    from training import module as module_mod

    logged = {}
    m = module_mod.SFTModule(bundled_model_dir, compose_cfg(["train=cpu_tiny"]).train, 1)
    monkeypatch.setattr(
        module_mod, "step_loss", lambda model, batch, scale: (torch.tensor(1.0), 1.0, "float32")
    )
    monkeypatch.setattr(m, "log", lambda name, value, **kw: logged.setdefault(name, kw))
    m.trainer = type("Trainer", (), {"world_size": 2})()
    batch = {"labels": torch.zeros(2, 3), "attention_mask": torch.ones(2, 3)}
    m.training_step(batch, 0)
    assert logged["train/loss"]["sync_dist"] is True


def test_missing_weights_fail_before_the_first_stage(tmp_path, monkeypatch):
    """A judge whose weights cannot be had fails at start-up, before the evolver runs (before,
    hours in, in the score stage)."""
    import engines.pool as engine_pool
    from pipeline.runner import run_job
    from tests.fakes import FakeEngine

    # A fake engine, but the real weight check (tests.fakes.use_engine stubs it).
    fake = FakeEngine()
    fake.loads = 0

    def build(*args):
        fake.loads += 1
        return fake

    monkeypatch.setattr(engine_pool, "build_engine", build)
    cfg = compose_cfg(
        [
            "engine=hf",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "data.limit=2",
            "stages=[evolve,respond,score]",
            "metrics=[judge]",
            "+model@metrics.judge.model=smollm2_135m",
            "metrics.judge.model.path=" + str(tmp_path / "no-such-judge"),
        ]
    )
    run = tmp_path / "run"
    assert run_job(cfg, run) is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "no-such-judge" in summary["error"]
    assert "metrics.judge.model.path" in summary["error"]
    assert fake.loads == 0 and not (run / "round_1").exists()


def test_weights_are_resolved_once_per_model_and_not_for_api_models(tmp_path):
    from pipeline.runner import build_stages
    from pipeline.weights import role_models

    cfg = compose_cfg(
        ["stages=[evolve,respond,score,evaluate]", "eval.pairwise.enabled=true"]
        + ["eval.pairwise.judge=gpt4", f"models_dir={MODELS_DIR}"]
    )
    roles = role_models(cfg, build_stages(cfg))
    assert "eval.pairwise.judge" not in roles  # behind an API: no weights here
    assert "model" in roles and "respond.model" not in roles  # the same model: resolved once


def test_one_wandb_run_per_run_folder(tmp_path, monkeypatch):
    """A job requeued after preemption reruns in its folder: it continues its W&B run (before,
    a new run per start)."""
    from reporting.tracking import Tracker, run_id

    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg(["logger=wandb"])
    first = Tracker(cfg, tmp_path)
    first_id = first.run.id
    first.finish({"status": "interrupted"})
    second = Tracker(cfg, tmp_path)
    try:
        assert first_id == second.run.id == run_id(tmp_path)
    finally:
        second.finish({"status": "ok"})
    other = Tracker(cfg, tmp_path / "other")
    try:
        assert other.run.id != first_id
    finally:
        other.finish(None)


def test_the_gpu_stack_is_pinned_to_what_is_tested():
    """`make venv EXTRA=gpu` installs with constraints/gpu.txt: every package of the GPU stack
    pinned (==), each pin within pyproject's lower bound, and the packages this CPU build also
    runs pinned to the versions installed here (the tested ones)."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    pins = {}
    for line in (ROOT / "constraints" / "gpu.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower()] = spec.version
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    stack = [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["gpu"]
    ]
    for req in stack:
        if req.name.lower() in {"vllm", "torch", "deepspeed", "pytorch-lightning", "transformers"}:
            assert req.name.lower() in pins, req.name
            assert req.specifier.contains(pins[req.name.lower()]), (req, pins[req.name.lower()])
    for name in ("pytorch-lightning", "deepspeed", "transformers", "lm-eval", "peft"):
        if name in pins:
            assert version(name) == pins[name], (name, version(name), pins[name])
    make = (ROOT / "Makefile").read_text()
    assert "-c constraints/gpu.txt" in make
