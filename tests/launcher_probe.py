"""Stages for the sized launcher's tests (plugins: [tests.launcher_probe]). They load no model
but declare the run's model as their role, so the launcher sizes their job by that model.

- `probe` records the GPUs its job was given (CUDA_VISIBLE_DEVICES, which submitit's local
  executor sets) and keeps the count in the cache folder, per model, as a cached step would:
  read back, not recomputed, when the job only reads the cache (`arms.missing=fail`);
- `probe_arms` reads every arm's count (`arm_needs`), as `filter.equal_size=smallest` reads
  every arm's ranked set: the launcher runs `probe` in every arm first."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from core.errors import NotCached
from core.fields import Stat
from core.stage import STAGES, Resources, Stage, StageResult


@STAGES.register()
class Probe(Stage):
    name = "probe"
    order = 12
    produces = ("gpus",)
    stats = (Stat("visible_gpus", headline=True, label="GPUs given to the job"),)

    def resources(self) -> Resources:
        return Resources(models=("model",))

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        kept = Path(ctx.cfg.cache_dir) / "probe" / f"{ctx.cfg.model.name}.json"
        if ctx.cache.read_only:
            if not kept.is_file():
                raise NotCached(f"probe: {kept} is not there")
            gpus = json.loads(kept.read_text())["gpus"]
        else:
            gpus = len([g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g])
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps({"gpus": gpus}))
        return StageResult(artifacts={"gpus": gpus}, summary={"probe/visible_gpus": gpus})


@STAGES.register()
class ProbeArms(Stage):
    name = "probe_arms"
    order = 13
    needs = ("gpus",)
    produces = ("arm_gpus",)

    def resources(self) -> Resources:
        return Resources(models=("model",))

    def arm_needs(self) -> tuple[str, ...]:
        return ("gpus",)

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        sizes = ctx.arm_sizes("gpus", int(inputs["gpus"]), "probe_arms")
        return StageResult(summary={f"probe_arms/{k}": v for k, v in sizes.items()})
