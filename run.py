"""Entry point: `python run.py [group=option ...] [key=value ...]`, or `-m` for a sweep.

Everything it does is named by the composed config (conf/); see README.md.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from core.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict | None:
    from hydra.types import RunMode

    from pipeline.arms import job_overrides_from_hydra
    from pipeline.runner import run_job
    from reporting.tracking import sweep_group

    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # a sweep: its jobs share one W&B group
        group = sweep_group(hc.sweep.dir)
    else:
        group = hc.runtime.choices.get("experiment") or "run"
    name = hc.job.override_dirname or hc.job.name
    job = job_overrides_from_hydra(hc)  # how other arms of the sweep are found (pipeline.arms)
    return run_job(cfg, hc.runtime.output_dir, group=group, name=name, job=job)


if __name__ == "__main__":
    from core.config import expand_seeds
    from core.signals import Interrupted, check_interrupt, stop_on_signals

    sys.argv[1:] = expand_seeds(sys.argv[1:])  # `seeds=3`: the sweep seed=0,1,2
    stop_on_signals()
    try:
        main()
        check_interrupt()
    except Interrupted as e:
        print(
            f"\n{e}: stopped. Finished work is cached; rerun the same command to resume.",
            file=sys.stderr,
        )
        sys.exit(e.exit_code)
    from pathlib import Path

    from pipeline.runner import FAILED_JOBS
    from reporting.compare import SWEEP_FAILURES

    # This process's jobs, and a sweep's jobs as their summary.json files tell it (joblib and
    # SLURM run them elsewhere); one job listed once.
    failed = {str(Path(job["dir"]).resolve()): job for job in [*SWEEP_FAILURES, *FAILED_JOBS]}
    if failed:
        print(f"\n{len(failed)} job(s) failed:", file=sys.stderr)
        for job in failed.values():
            print(f"  {job['dir']}: {job['error']}", file=sys.stderr)
        sys.exit(1)
