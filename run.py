"""Entry point: `python run.py [group=option ...] [key=value ...]`, or `-m` for a sweep.

Everything it does is named by the composed config (conf/); see README.md.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import core.config  # noqa: F401  (registers the config's resolvers before Hydra composes)


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
    with children_join_this_job(hc):
        return run_job(cfg, hc.runtime.output_dir, group=group, name=name, job=job)


# Command-line flags that take the next argument as their value.
_VALUED_FLAGS = ("-cn", "-cp", "-cd", "--config-name", "--config-path", "--config-dir")


def child_argv(argv: list[str], task_overrides: list[str]) -> list[str]:
    """The arguments a sweep job's own child processes run with: the job's overrides alone,
    without `-m` and the sweep's other values, keeping the config-selecting flags."""
    flags, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a in _VALUED_FLAGS and i + 1 < len(argv):
            flags += [a, argv[i + 1]]
            i += 1
        elif a.startswith("-") and a not in ("-m", "--multirun"):
            flags.append(a)
        i += 1
    return [*flags, *task_overrides]


@contextlib.contextmanager
def children_join_this_job(hc):
    """Lightning's launcher re-runs this script once per extra device with `sys.argv` and
    `hydra.run.dir=<HydraConfig's run.dir>`. In a sweep job that would rerun the sweep (`-m`),
    each child in a sweep folder its `${now:...}` resolves anew, while rank 0 waits for them:
    a deadlock. For the job's lifetime, its children get the job's own overrides and its
    folder as their run folder, in which they run as one job (training.ranks)."""
    from hydra.types import RunMode
    from omegaconf import read_write

    if hc.mode != RunMode.MULTIRUN:
        yield
        return
    argv, run_dir = list(sys.argv), hc.run.dir
    sys.argv[1:] = child_argv(argv[1:], list(hc.overrides.task))
    with read_write(hc):
        hc.run.dir = hc.runtime.output_dir
    try:
        yield
    finally:
        sys.argv[:] = argv
        with read_write(hc):
            hc.run.dir = run_dir


def record_override(argv: list[str], record: Path) -> list[str]:
    """`argv` with the override that names this invocation's record file (reporting.jobs): where
    Hydra's callback says which run or sweep folder it ran, whose summary.json files decide the
    exit status. One inherited from a parent process (Lightning re-runs this script per device
    with the parent's arguments) is replaced: each process reads its own."""
    from reporting.jobs import RECORD_KEY

    value = str(record).replace("\\", "\\\\").replace("'", "\\'")
    kept = [a for a in argv if not a.startswith(f"{RECORD_KEY}=")]
    return [*kept, f"{RECORD_KEY}='{value}'"]


if __name__ == "__main__":
    import os
    import tempfile

    from core.config import expand_seeds
    from core.signals import Interrupted, check_interrupt, stop_on_signals
    from reporting.jobs import invocation_failures

    fd, name = tempfile.mkstemp(prefix="evolvers-run-", suffix=".json")
    os.close(fd)
    record = Path(name)
    try:
        # `seeds=3`: the sweep seed=0,1,2
        sys.argv[1:] = record_override(expand_seeds(sys.argv[1:]), record)
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
        # The jobs this invocation ran, as their summary.json files tell it (joblib and SLURM run
        # a sweep's jobs elsewhere), and a sweep's comparison as <sweep>/sweep.json tells it.
        failed = {str(Path(job["dir"]).resolve()): job for job in invocation_failures(record)}
    finally:
        record.unlink(missing_ok=True)
    if failed:
        print(f"\n{len(failed)} job(s) failed:", file=sys.stderr)
        for job in failed.values():
            print(f"  {job['dir']}: {job['error']}", file=sys.stderr)
        sys.exit(1)
