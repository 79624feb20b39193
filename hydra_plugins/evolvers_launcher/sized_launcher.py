"""`hydra/launcher=slurm`: hydra-submitit's SLURM launcher, with each job sized from its stages
and a sweep whose arms read each other's artifacts run in passes (pipeline.launcher says how).
`cluster: local` runs the same plan with submitit's local executor (one process per job on this
machine, the GPUs it was given in CUDA_VISIBLE_DEVICES): how it is tested without a cluster.

Hydra finds this module through the `hydra_plugins` namespace package; the submitit workers
unpickle the launcher from here, so importing it registers the config's resolvers too."""

import dataclasses
import json
import logging
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import open_dict

import core.config  # noqa: F401  (the config's resolvers, in the workers too)
from pipeline.launcher import Sizing

log = logging.getLogger(__name__)

SIZING_KEYS = tuple(f.name for f in dataclasses.fields(Sizing))


# hydra-submitit's SLURM settings, the cluster, and the sizing's own (pipeline.launcher.Sizing).
SizedSlurmConf = dataclasses.make_dataclass(
    "SizedSlurmConf",
    [
        ("_target_", str, "hydra_plugins.evolvers_launcher.sized_launcher.SizedSlurmLauncher"),
        ("cluster", str, "slurm"),  # slurm | local (submitit's local executor: tests, one machine)
        *[
            (f.name, typing.get_type_hints(Sizing)[f.name], f.default)
            for f in dataclasses.fields(Sizing)
        ],
    ],
    bases=(SlurmQueueConf,),
)


ConfigStore.instance().store(
    group="hydra/launcher", name="sized_slurm", node=SizedSlurmConf, provider="evolvers"
)


class SizedSlurmLauncher(BaseSubmititLauncher):
    _EXECUTOR = "slurm"

    def __init__(self, **params: Any) -> None:
        self.cluster = str(params.pop("cluster", "slurm"))
        if self.cluster not in ("slurm", "local"):
            from core.errors import unknown_option

            raise unknown_option("hydra.launcher.cluster", self.cluster, ["slurm", "local"])
        sizing = {k: params.pop(k) for k in SIZING_KEYS if k in params}
        self.sizing = Sizing(**sizing)
        # What every allocation shares (time limit, account, qos, ...); the sizes are per job.
        for key in ("gpus_per_node", "tasks_per_node", "nodes", "cpus_per_task", "mem_gb"):
            params.pop(key, None)
        if not params.get("partition"):
            params.pop("partition", None)
        super().__init__(**params)

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        from pipeline.launcher import describe, plan_sweep
        from pipeline.runner import build_stages

        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        jobs = []
        for i, overrides in enumerate(job_overrides):
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                cfg.pop("hydra", None)
            jobs.append((initial_job_idx + i, list(overrides), cfg, build_stages(cfg)))
        passes = plan_sweep(jobs, self.sizing)
        record = describe(passes, self.sizing)
        (sweep_dir / "launch.json").write_text(json.dumps(record, indent=1) + "\n")
        results: list[JobReturn] = []
        for p in passes:
            log.info("pass %s: %d job(s)", p.produce or "jobs", len(p.jobs))
            submitted = []
            for alloc, group in p.groups.items():
                executor = self._executor(alloc)
                for j in group:
                    log.info(
                        "\t#%d (%s): %s",
                        j.index,
                        alloc.label,
                        " ".join(filter_overrides(j.overrides)),
                    )
                args = [
                    (
                        j.overrides,
                        "hydra.sweep.dir",
                        j.index,
                        f"job_id_for_{j.index}",
                        Singleton.get_state(),
                    )
                    for j in group
                ]
                handles = executor.map_array(self, *zip(*args))
                submitted += list(zip(group, handles))
                for j, h in zip(group, handles):
                    self._note(record, p.produce, j.index, h.job_id)
            (sweep_dir / "launch.json").write_text(json.dumps(record, indent=1) + "\n")
            done = {j.index: h.results()[0] for j, h in submitted}  # a pass ends before the next
            results = [done[j.index] for j in p.jobs]
        return results

    def _executor(self, alloc: Any) -> Any:
        import submitit

        from pipeline.launcher import submit_params

        params = dict(self.params)
        init = {"folder": params.pop("submitit_folder")}
        if "max_num_timeout" in params:
            init["slurm_max_num_timeout"] = params.pop("max_num_timeout")
        executor = submitit.AutoExecutor(cluster=self.cluster, **init)
        generic = {"timeout_min", "name", "stderr_to_stdout"}
        shared = {
            (k if k in generic else f"slurm_{k}"): v
            for k, v in params.items()
            if v is not None and v != {} and v != []
        }
        executor.update_parameters(**shared, **submit_params(alloc, self.sizing))
        return executor

    @staticmethod
    def _note(record: dict, produce: str | None, index: int, job_id: str) -> None:
        for p in record["passes"]:
            if p["produce"] == produce:
                for j in p["jobs"]:
                    if j["job"] == index:
                        j["submitit_job_id"] = str(job_id)
