"""The arms of a comparison (SPEC §9): jobs of one sweep that differ in one setting.

Three stages need another arm's artifact inside a job:
- `filter.equal_size=smallest` cuts this job's set to the smallest arm's size, the arms being the
  sweep's values of `filter.equal_across` (the evolver, `model`, by default);
  `scenario.equal_size_constraints=smallest` (AutoIF) does the same with constraints, after
  the evolve stage;
- `eval.pairwise.against_arm=filter=ifd` judges this job's model against the model trained by the
  job that differs from this one by that override (the paper's IC-IFD vs IFD win rates).

Another arm is its own config - this job's overrides with the arm's value - whose artifact comes
from the same stage loop (`StageContext.arm(overrides).artifact(name)`), run only through the
stages that produce it, in `<run>/arms/<override>/`. Every step is content-addressed in the cache,
so when that arm's job already ran this costs nothing, and what is computed here is the arm job's
own work, found in the cache when it runs. No launcher order is assumed. The loop is handed in by
the runner (`Arms(..., loop=...)`): this module does not import it.
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
from core.errors import ConfigError, NotCached

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


# (config, run dir, job, cache_only) -> the stage loop of that job (pipeline.runner.Run):
# `.artifact(name)` runs the stages that produce it (None when none does), `.stage_names(name)`
# names them.
Loop = Callable[[Any, Path, JobOverrides, bool], Any]


class Arms:
    """The other arms of this job's sweep, for the stages of one job (on its StageContext)."""

    def __init__(
        self,
        job: JobOverrides,
        run_dir: Path,
        loop: Loop,
        equal_across: str = "model",
        cache_only: bool = False,
        before: Callable[[], None] | None = None,
    ):
        self.job = job
        self.run_dir = Path(run_dir)
        self.loop = loop
        self.equal_across = equal_across
        self.cache_only = cache_only
        self.before = before  # frees this job's engine: the arm loads its own models

    def arm(self, changes: list[str]) -> Arm:
        return Arm(self, list(changes))

    def is_this_job(self, changes: list[str]) -> bool:
        return is_this_job(self.job, changes)

    def sizes(self, artifact: str, own: int, cut: str) -> dict[str, int]:
        """{arm value: the arm's `artifact` (a count, or the length of a list)} for every value
        of `equal_across` in the sweep; this job's own is `own`. `cut` names the setting that
        asks (for the error when this job is not part of such a sweep)."""
        key = self.equal_across
        values = self.job.sweep.get(key)
        if not values or len(values) < 2:
            raise ConfigError(
                f"{cut}=smallest: this job is not part of a sweep over {key} "
                f"(filter.equal_across); sweep it (python run.py -m {key}=a,b ...) or set "
                f"{cut} to a number"
            )
        mine = parse_overrides(self.job.task).get(key, [None])[0]
        sizes: dict[str, int] = {}
        for value in values:
            if value == mine:
                sizes[value] = int(own)
                continue
            got = self.arm([f"{key}={value}"]).artifact(artifact)
            sizes[value] = int(got if isinstance(got, int) else len(got or []))
        return sizes


class Arm:
    def __init__(self, arms: Arms, changes: list[str]):
        self.arms = arms
        self.changes = changes

    @property
    def label(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=,-]+", "_", ",".join(self.changes))

    def artifact(self, name: str) -> Any:
        """The arm's artifact `name`, from its stages that produce it (cache hits where its job
        already ran; with `arms.missing=fail` nothing is computed, and what the cache lacks is
        an error naming the command that computes it)."""
        arms, job = self.arms, self.arms.job
        overrides = arm_overrides(job, self.changes)
        try:
            cfg = compose_config(overrides)
        except Exception as e:  # a Hydra composition error: name the arm
            raise ConfigError(f"arm {' '.join(self.changes)}: {str(e).splitlines()[0]}") from None
        if arms.before:
            arms.before()
        log.info("arm %s: its %s (cache hits where its job already ran)", self.label, name)
        arm_job = JobOverrides(task=overrides, sweep=job.sweep)
        loop = arms.loop(cfg, arms.run_dir / "arms" / self.label, arm_job, arms.cache_only)
        try:
            return loop.artifact(name)
        except NotCached as e:
            stages = loop.stage_names(name)
            command = " ".join(["python run.py", *overrides, f"stages=[{','.join(stages)}]"])
            raise NotCached(
                f"arm {' '.join(self.changes)} has not run up to {stages[-1]} "
                f"(arms.missing=fail; {e}); run it first: {command}"
            ) from None
