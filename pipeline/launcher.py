"""A sweep on SLURM sized per job and per pass: what `hydra/launcher=slurm` plans and submits
(the Hydra plugin is hydra_plugins/evolvers_launcher; this module is its logic, testable without
a cluster).

Each job is sized from the stages it runs (core.stage: `resources()`): every role model it loads
needs tensor x pipeline parallel GPUs (x `engine.replicas` where that is a number), the train
stage `train.devices` x `train.num_nodes` (one task per GPU, as Lightning needs), and a job of
CPU-only stages (or one whose models are all behind an API) no GPU at all. The stages of a job
run one after another, so a job gets the largest of its stages, not their sum. Jobs that ask for
the same allocation are submitted as one array job.

A sweep whose arms read each other's artifacts (`filter.equal_size=smallest` reads every arm's
ranked set, AutoIF's `scenario.equal_size_constraints=smallest` its constraint count, a pairwise
`eval.pairwise.against_arm` the other arm's trained model) runs in passes: first every job only
through the stages that produce the earliest such artifact (`arms.produce=<artifact>`, in
`<sweep>/<artifact>/<n>`), sized for those stages alone, then the next, then every whole job,
all with `arms.missing=fail`: no job ever runs another arm's stages on its own allocation (which
may not fit that arm's models), and each arm's work is done once. One sweep folder, one W&B group
and one comparison, whatever the sizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from omegaconf import OmegaConf

from core.config import role_model
from core.stage import Stage, plan_for


@dataclass(frozen=True)
class Sizing:
    """How allocations are made (hydra.launcher.* of conf/hydra/launcher/slurm.yaml)."""

    max_gpus_per_node: int = 8
    train_devices_auto: int = 8  # GPUs per node for train.devices=auto
    cpus_per_gpu: int = 12
    mem_gb_per_gpu: int = 120
    cpu_cpus_per_task: int = 8
    cpu_mem_gb: int = 32
    gpu_partition: str | None = None
    cpu_partition: str | None = None


@dataclass(frozen=True)
class Allocation:
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def label(self) -> str:
        if not self.gpus_per_node:
            return "cpu"
        return f"{self.nodes}x{self.gpus_per_node}gpu" + (
            f"x{self.tasks_per_node}tasks" if self.tasks_per_node > 1 else ""
        )


def role_gpus(cfg: Any, key: str) -> int:
    """GPUs the model of role `key` takes while it is loaded: 0 behind an API."""
    model = role_model(cfg, OmegaConf.select(cfg, key), key)
    engine = model.get("engine") or {}
    if (engine.get("kind") or cfg.engine.kind) == "openai":
        return 0
    per_replica = int(model.get("tensor_parallel_size") or 1) * int(
        model.get("pipeline_parallel_size") or 1
    )
    replicas = cfg.engine.get("replicas")
    return per_replica * (int(replicas) if isinstance(replicas, int) and replicas > 1 else 1)


def train_footprint(cfg: Any, sizing: Sizing) -> tuple[int, int]:
    """(nodes, devices per node) of the train stage."""
    devices = cfg.train.devices
    per_node = sizing.train_devices_auto if devices == "auto" else int(devices)
    return max(1, int(cfg.train.num_nodes)), max(1, per_node)


def allocation(cfg: Any, stages: list[Stage], sizing: Sizing) -> Allocation:
    """The allocation that fits each of `stages` in turn."""
    gen = max((role_gpus(cfg, k) for s in stages for k in s.resources().models), default=0)
    trains = any(s.resources().train for s in stages)
    nodes, per_node, tasks = 1, 0, 1
    if trains:
        nodes, per_node = train_footprint(cfg, sizing)
        tasks = per_node if nodes * per_node > 1 else 1
    if gen:
        nodes = max(nodes, math.ceil(gen / sizing.max_gpus_per_node))
        per_node = max(per_node, math.ceil(gen / nodes))
    return Allocation(nodes=nodes, gpus_per_node=per_node, tasks_per_node=tasks)


def submit_params(alloc: Allocation, sizing: Sizing) -> dict[str, Any]:
    """submitit parameters (the generic ones and `slurm_`-prefixed) for an allocation."""
    if not alloc.gpus_per_node:
        out: dict[str, Any] = {
            "nodes": 1,
            "tasks_per_node": 1,
            "cpus_per_task": sizing.cpu_cpus_per_task,
            "mem_gb": sizing.cpu_mem_gb,
        }
        partition = sizing.cpu_partition
    else:
        out = {
            "nodes": alloc.nodes,
            "gpus_per_node": alloc.gpus_per_node,
            "tasks_per_node": alloc.tasks_per_node,
            "cpus_per_task": max(
                1, sizing.cpus_per_gpu * alloc.gpus_per_node // alloc.tasks_per_node
            ),
            "mem_gb": sizing.mem_gb_per_gpu * alloc.gpus_per_node,
        }
        partition = sizing.gpu_partition
    if partition:
        out["slurm_partition"] = partition
    return out


def arm_artifacts(stages_per_job: list[list[Stage]]) -> list[str]:
    """The artifacts any job reads from other arms, in the order the stages produce them."""
    order: dict[str, int] = {}
    for stages in stages_per_job:
        for stage in stages:
            for artifact in stage.arm_needs():
                producers = [s.order for s in stages if artifact in s.produces]
                order[artifact] = min(
                    order.get(artifact, 10**6), min(producers, default=stage.order)
                )
    return sorted(order, key=lambda a: order[a])


@dataclass
class PlannedJob:
    index: int  # the job's number in the sweep
    overrides: list[str]  # what the job runs with (its own, then the pass's)
    allocation: Allocation
    stages: list[str]


@dataclass
class Pass:
    produce: str | None  # None: the whole jobs
    jobs: list[PlannedJob]

    @property
    def groups(self) -> dict[Allocation, list[PlannedJob]]:
        out: dict[Allocation, list[PlannedJob]] = {}
        for job in self.jobs:
            out.setdefault(job.allocation, []).append(job)
        return out


def plan_sweep(jobs: list[tuple[int, list[str], Any, list[Stage]]], sizing: Sizing) -> list[Pass]:
    """The passes of a sweep of `jobs` ((number, overrides, composed config, stages) each)."""
    artifacts = arm_artifacts([stages for _, _, _, stages in jobs])
    passes: list[Pass] = []
    extra = ["arms.missing=fail"] if artifacts else []
    for produce in [*artifacts, None]:
        planned = []
        for num, overrides, cfg, stages in jobs:
            work = [s for s in stages if not s.final]
            chosen = plan_for(work, produce) if produce else stages
            more = list(extra)
            if produce:
                # Its own folder and no W&B run: a pass's job is not an arm of the comparison.
                more += [
                    f"arms.produce={produce}",
                    f"hydra.sweep.subdir={produce}/{num}",
                    "logger.name=none",
                ]
            planned.append(
                PlannedJob(
                    index=num,
                    overrides=[*overrides, *more],
                    allocation=allocation(cfg, chosen, sizing),
                    stages=[s.name for s in chosen],
                )
            )
        passes.append(Pass(produce=produce, jobs=planned))
    return passes


def describe(passes: list[Pass], sizing: Sizing) -> dict[str, Any]:
    """What `<sweep>/launch.json` records: every pass, its jobs and what each asked for."""
    return {
        "passes": [
            {
                "produce": p.produce,
                "jobs": [
                    {
                        "job": j.index,
                        "overrides": j.overrides,
                        "stages": j.stages,
                        "allocation": j.allocation.label,
                        "gpus": j.allocation.gpus,
                        "params": submit_params(j.allocation, sizing),
                    }
                    for j in p.jobs
                ],
            }
            for p in passes
        ],
        "sizing": asdict(sizing),
    }
