"""The arms of a comparison (SPEC §9): jobs of one sweep that differ in one setting.

Two steps need another arm's result inside a job:
- `filter.equal_size=smallest` cuts this job's set to the smallest arm's size, the arms being the
  sweep's values of `filter.equal_across` (the evolver, `model`, by default);
  `scenario.equal_size_constraints=smallest` (AutoIF) does the same with constraints, after
  the evolve stage;
- `eval.pairwise.against_arm=filter=ifd` judges this job's model against the model trained by the
  job that differs from this one by that override (the paper's IC-IFD vs IFD win rates).

Another arm is its own config - this job's overrides with the arm's value - run here up to the
stage needed, in `<run>/arms/<override>/`. Every step is content-addressed in the cache, so when
that arm's job already ran this costs nothing, and what is computed here is the arm job's own
work, found in the cache when it runs. No launcher order is assumed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.config import compose_config
from core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class JobOverrides:
    """What composed this job: its own overrides and the values of every swept key."""

    task: list[str] = field(default_factory=list)  # e.g. ["experiment=table4", "model=a"]
    sweep: dict[str, list[str]] = field(default_factory=dict)  # e.g. {"model": ["a", "b"]}


def override_key(override: str) -> str:
    """`model` of `model=a`, `+model@metrics.ifd.model` of `+model@metrics.ifd.model=x`."""
    return override.split("=", 1)[0].lstrip("+~")


def parse_overrides(overrides: list[str]) -> dict[str, list[str]]:
    """{key: values} of Hydra override strings, sweeps expanded (`model=a,b` -> [a, b])."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    gh = GlobalHydra.instance()
    loader = gh.config_loader() if gh.is_initialized() else None  # glob(...) needs the groups
    out: dict[str, list[str]] = {}
    try:
        for o in OverridesParser.create(config_loader=loader).parse_overrides(list(overrides)):
            values = (
                list(o.sweep_string_iterator())
                if o.is_sweep_override()
                else [o.get_value_element_as_str()]
            )
            out[o.get_key_element().lstrip("+~")] = values
    except Exception as e:  # Hydra's parser errors: name the overrides
        raise ConfigError(f"cannot read the overrides {overrides}: {e}") from None
    return out


def job_overrides_from_hydra(hc: Any) -> JobOverrides:
    """A Hydra job's overrides and its sweep's values per key: the preset's
    `hydra.sweeper.params`, unless the command line sweeps that key over values that are not a
    part of the preset's (then the command line's). A command line that runs a part of a preset's
    arms (a split by launcher size) keeps the preset's arms, so every part cuts to the same
    smallest arm."""
    preset: dict[str, list[str]] = {}
    params = hc.sweeper.get("params") or {}
    if params:
        preset = parse_overrides([f"{k}={v}" for k, v in params.items()])
    line: list[str] = []
    multirun = Path(str(hc.sweep.dir)) / "multirun.yaml"
    if multirun.is_file():  # a multirun: the command line as given, sweeps unexpanded
        line = list(OmegaConf.select(OmegaConf.load(multirun), "hydra.overrides.task") or [])
    return JobOverrides(task=list(hc.overrides.task), sweep=sweep_values(preset, line))


def sweep_values(preset: dict[str, list[str]], command_line: list[str]) -> dict[str, list[str]]:
    """The arms per key: see `job_overrides_from_hydra`."""
    sweep = dict(preset)
    for key, values in parse_overrides(command_line).items():
        if len(values) > 1 and not set(values) <= set(preset.get(key, [])):
            sweep[key] = values
    return sweep


def arm_overrides(job: JobOverrides, changes: list[str]) -> list[str]:
    """This job's overrides with `changes` (override strings) replacing the same keys."""
    keys = {override_key(c) for c in changes}
    return [o for o in job.task if override_key(o) not in keys] + list(changes)


def is_this_job(job: JobOverrides, changes: list[str]) -> bool:
    """Whether this job already is the arm `changes` names."""
    mine = parse_overrides(job.task)
    return all(mine.get(k) == v for k, v in parse_overrides(changes).items())


def run_arm(
    job: JobOverrides,
    changes: list[str],
    stages: list[str],
    run_dir: Path,
    equal_size: bool = True,
    cache_only: bool = False,
    cut: str = "filter.equal_size",
) -> Any:
    """The arm `changes` run up to `stages` in `<run_dir>/arms/<changes>/`; returns its Run.
    `equal_size=False`: the arm's set before its own equal-size cut `cut` (the key set to null;
    what `arm_sizes` needs).
    `cache_only`: nothing is computed; a result not in the cache is a NotCached error naming the
    arm and the command that computes it."""
    from core.errors import NotCached
    from pipeline.runner import Run

    stage_list = ",".join(stages)
    # What is not asked of the arm is switched off (its pairwise judge; its equal-size cut when
    # its size is what is asked, which would otherwise recurse).
    extras = [f"++stages=[{stage_list}]", "++eval.pairwise.enabled=false"]
    if not equal_size:
        extras.append(f"++{cut}=null")
    overrides = arm_overrides(job, [*changes, *extras])
    try:
        cfg = compose_config(overrides)
    except Exception as e:  # a Hydra composition error: name the arm
        raise ConfigError(f"arm {' '.join(changes)}: {str(e).splitlines()[0]}") from None
    name = re.sub(r"[^A-Za-z0-9_.=,-]+", "_", ",".join(changes))
    log.info("arm %s: running %s (cache hits where its job already ran)", name, stage_list)
    arm_job = JobOverrides(task=arm_overrides(job, changes), sweep=job.sweep)
    run = Run(cfg, Path(run_dir) / "arms" / name, job=arm_job, cache_only=cache_only)
    try:
        run.run()
    except NotCached as e:
        command = " ".join(
            ["python run.py", *arm_overrides(job, changes), f"stages=[{stage_list}]"]
        )
        raise NotCached(
            f"arm {' '.join(changes)} has not run up to {stages[-1]} (arms.missing=fail; {e}); "
            f"run it first: {command}"
        ) from None
    return run


def arm_sizes(
    job: JobOverrides,
    key: str,
    own: int,
    stages: list[str],
    run_dir: Path,
    cache_only: bool = False,
    cut: str = "filter.equal_size",
    size_of: Callable[[Any], int] | None = None,
) -> dict[str, int]:
    """{arm value: records it selects} for every value of `key` in the sweep; this job's own
    size is `own`, the others are run through `stages` (this job's, up to its filter) with the
    cut `cut` off. `size_of(run)`: another measure of an arm's size than what its filter kept
    (the constraints of `scenario.equal_size_constraints`)."""
    values = job.sweep.get(key)
    if not values or len(values) < 2:
        raise ConfigError(
            f"{cut}=smallest: this job is not part of a sweep over {key} "
            f"(filter.equal_across); sweep it (python run.py -m {key}=a,b ...) or set "
            f"{cut} to a number"
        )
    mine = parse_overrides(job.task).get(key, [None])[0]
    sizes: dict[str, int] = {}
    for value in values:
        if value == mine:
            sizes[value] = own
            continue
        arm = run_arm(
            job,
            [f"{key}={value}"],
            stages,
            run_dir,
            equal_size=False,
            cache_only=cache_only,
            cut=cut,
        )
        if size_of is not None:
            sizes[value] = int(size_of(arm))
        else:
            sizes[value] = int((arm.filter_counts or {}).get("kept", 0))
    return sizes
