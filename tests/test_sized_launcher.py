"""`hydra/launcher=slurm`: each job sized from its stages' roles, jobs of one size submitted
together, a sweep whose arms read each other run in passes; one sweep folder and one comparison.
The planning on composed configs, then a whole sweep through submitit's local executor (which
hands each job the GPUs it asked for in CUDA_VISIBLE_DEVICES)."""

from __future__ import annotations

import json

import pytest

from pipeline.launcher import Allocation, Sizing, allocation, plan_sweep, submit_params
from pipeline.runner import build_stages
from tests.conftest import MODELS_DIR, compose_cfg, run_cli

SIZING = Sizing(max_gpus_per_node=8, train_devices_auto=8, cpus_per_gpu=12, mem_gb_per_gpu=100)


def _alloc(*overrides: str) -> Allocation:
    cfg = compose_cfg(list(overrides))
    return allocation(cfg, build_stages(cfg), SIZING)


def test_a_job_is_sized_by_the_largest_model_of_its_stages():
    evolve = ["stages=[evolve,respond]", "engine=vllm"]
    assert _alloc("model=qwen2.5_0.5b", *evolve) == Allocation(1, 1, 1)
    assert _alloc("model=qwen2.5_72b", *evolve) == Allocation(1, 8, 1)
    # The 0.5B evolver's job scores with a 72B judge: the judge sizes it (before, one
    # allocation for every job of the sweep, the evolver's, failed in the score stage).
    judged = ["stages=[evolve,respond,score]", "metrics=[judge]", "metrics.judge.model=qwen2.5_72b"]
    assert _alloc("model=qwen2.5_0.5b", *judged).gpus == 8


def test_training_asks_for_one_task_per_gpu_on_each_node():
    train = ["stages=[train]", "train=paper"]
    assert _alloc(*train) == Allocation(nodes=1, gpus_per_node=8, tasks_per_node=8)
    two = _alloc(*train, "train.devices=8", "train.num_nodes=2")
    assert two == Allocation(nodes=2, gpus_per_node=8, tasks_per_node=8)
    assert _alloc("stages=[train]", "train.devices=1") == Allocation(1, 1, 1)


def test_cpu_only_jobs_ask_for_no_gpu():
    assert _alloc("stages=[report]") == Allocation(1, 0, 1)
    assert _alloc("stages=[evolve,respond]", "engine=openai").gpus == 0  # models behind an API
    params = submit_params(Allocation(1, 0, 1), Sizing(cpu_partition="cpu", cpu_mem_gb=16))
    assert "gpus_per_node" not in params and params["slurm_partition"] == "cpu"
    assert params["mem_gb"] == 16
    gpu = submit_params(Allocation(1, 8, 8), Sizing(gpu_partition="gpu", mem_gb_per_gpu=100))
    assert gpu["gpus_per_node"] == 8 and gpu["tasks_per_node"] == 8 and gpu["mem_gb"] == 800
    assert gpu["cpus_per_task"] == 12 and gpu["slurm_partition"] == "gpu"


def _jobs(*sweep: list[str]):
    out = []
    for i, overrides in enumerate(sweep):
        cfg = compose_cfg(list(overrides))
        out.append((i, list(overrides), cfg, build_stages(cfg)))
    return out


def test_arms_cut_to_the_smallest_run_in_passes_each_sized_for_its_stages():
    """Table 1's sweep: every arm is first run up to its ranked set (the artifact the cut reads)
    on its own evolver's GPUs, then every whole job reads the other arms' from the cache."""
    common = ["experiment=table1_evol", "domain=general"]
    passes = plan_sweep(
        _jobs([*common, "model=llama3.1_8b"], [*common, "model=llama3.1_70b"]), SIZING
    )
    assert [p.produce for p in passes] == ["ranked", None]
    first, whole = passes
    assert [j.stages[-1] for j in first.jobs] == ["filter", "filter"]
    assert all("arms.produce=ranked" in j.overrides for j in first.jobs)
    assert all("arms.missing=fail" in j.overrides for p in passes for j in p.jobs)
    assert "hydra.sweep.subdir=ranked/1" in first.jobs[1].overrides
    # The first pass: the 72B responder and judge of the study (TP 8) in both arms.
    assert [j.allocation.gpus for j in first.jobs] == [8, 8]
    # The whole jobs also train the 8B student on a node (ZeRO-3, one task per GPU).
    assert all(j.allocation == Allocation(1, 8, 8) for j in whole.jobs)
    assert len(whole.groups) == 1


def test_a_sweep_without_cross_arm_reads_is_one_pass_and_groups_by_size():
    passes = plan_sweep(
        _jobs(
            ["model=qwen2.5_0.5b", "stages=[evolve]"],
            ["model=qwen2.5_72b", "stages=[evolve]"],
            ["model=qwen2.5_1.5b", "stages=[evolve]"],
        ),
        SIZING,
    )
    assert [p.produce for p in passes] == [None]
    groups = passes[0].groups
    assert {a.label: [j.index for j in js] for a, js in groups.items()} == {
        "1x1gpu": [0, 2],
        "1x8gpu": [1],
    }
    assert not any("arms.missing=fail" in o for j in passes[0].jobs for o in j.overrides)


def test_an_unknown_cluster_lists_the_valid_ones():
    from hydra_plugins.evolvers_launcher.sized_launcher import SizedSlurmLauncher

    with pytest.raises(Exception, match="slurm.*local|local.*slurm"):
        SizedSlurmLauncher(cluster="pbs", submitit_folder="x")


@pytest.mark.slow
def test_one_sweep_of_a_small_and_a_large_evolver_with_per_job_gpus(tmp_path, bundled_model_dir):
    """The user's command on a (local) cluster: `-m model=qwen2.5_0.5b,qwen2.5_72b`. The 72B
    job gets 8 GPUs, the 0.5B job one; the arm-reading stage runs after every arm's first pass
    and reads the other arm's number from it; one comparison covers both jobs."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "model=qwen2.5_0.5b,qwen2.5_72b",
            f"model.path={bundled_model_dir}",  # the sizes are the configs', the weights small
            "stages=[probe,probe_arms]",
            "plugins=[tests.launcher_probe]",
            "logger=none",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "hydra/launcher=slurm",
            "hydra.launcher.cluster=local",
            f"hydra.sweep.dir={sweep}",
        ],
        timeout=540,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summaries = [json.loads((sweep / str(i) / "summary.json").read_text()) for i in (0, 1)]
    assert [s["probe/visible_gpus"] for s in summaries] == [1, 8]
    for s in summaries:  # each arm's number, from that arm's own first-pass job
        assert s["probe_arms/qwen2.5_0.5b"] == 1 and s["probe_arms/qwen2.5_72b"] == 8
    assert (sweep / "gpus" / "1" / "summary.json").is_file()
    launch = json.loads((sweep / "launch.json").read_text())
    assert [p["produce"] for p in launch["passes"]] == ["gpus", None]
    asked = [j["params"].get("gpus_per_node") for j in launch["passes"][1]["jobs"]]
    assert asked == [1, 8] and all(j.get("submitit_job_id") for j in launch["passes"][1]["jobs"])
    comparison = (sweep / "comparison.md").read_text()
    assert "qwen2.5_0.5b" in comparison and "qwen2.5_72b" in comparison
    assert json.loads((sweep / "sweep.json").read_text())["comparison"]["status"] == "ok"


def test_the_score_stage_is_sized_for_the_evolver_the_confidence_metric_loads():
    """A 72B evolver scored by a small judge: the confidence metric generates with the evolver,
    so the score stage needs the evolver's 8 GPUs too."""
    small_judge = ["metrics.judge.model=qwen2.5_0.5b", "model=qwen2.5_72b"]
    assert _alloc("stages=[score]", "metrics=[judge,confidence]", *small_judge).gpus == 8
    assert _alloc("stages=[score]", "metrics=[judge]", *small_judge).gpus == 1


def test_the_sbatch_script_asks_for_each_allocation(tmp_path, monkeypatch):
    """submitit's own SLURM executor on a fake cluster (an `srun` on PATH): the script of an
    8-GPU training job and of a CPU-only job, with the settings they share."""
    from hydra_plugins.evolvers_launcher.sized_launcher import SizedSlurmLauncher

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    launcher = SizedSlurmLauncher(
        submitit_folder=str(tmp_path / "%j"),
        timeout_min=60,
        account="acct",
        partition=None,
        gpus_per_node=1,  # a fixed size would be ignored: sizes are per job
        gpu_partition="gpu",
        cpu_partition="cpu",
        mem_gb_per_gpu=100,
        additional_parameters={},
        name="study",
    )

    def script(alloc: Allocation) -> str:
        return launcher._executor(alloc)._executor._make_submission_file_text("python -m x", "u")

    gpu = script(Allocation(1, 8, 8))
    for line in ("--gpus-per-node=8", "--ntasks-per-node=8", "--partition=gpu", "--mem=800GB"):
        assert f"#SBATCH {line}" in gpu
    assert "#SBATCH --account=acct" in gpu and "#SBATCH --time=60" in gpu
    cpu = script(Allocation(1, 0, 1))
    assert "--gpus-per-node" not in cpu and "#SBATCH --partition=cpu" in cpu
