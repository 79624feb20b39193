"""The stage contract and its registry: a job is an ordered list of stages over named artifacts.

A stage (distilabel's steps are the model) declares
- `name` and `order` (its place in a job), and `part_of`: the stage of `stages=[...]` that selects
  it too (`verify` runs with `respond`, `equal_size` with `filter`); `always` stages run in every
  job (the seeds, the summary);
- `section` and `Config`: the config section it reads, checked into an instance of `Config` once at
  start-up (a stage reads `self.cfg`, never the raw composed config, for its own settings);
- `needs` and `produces`: the artifacts it reads and writes (`seeds`, `sets`, `scores`, `ranked`,
  `selected`, `train_dir`, ...); another arm's artifact is the same loop run up to its producer
  (`StageContext.arm`);
- `key(inputs)`: its cache key where the stage as a whole is cached (training: the trained model's
  folder); None where its steps are cached inside it (every generation is);
- `resources()`: the role models it loads (their GPUs follow from tensor x pipeline parallel) or
  CPU only, and whether it trains (the training footprint): what a launcher sizes a job by;
- `arm_needs()`: the artifacts of other arms of the sweep it reads (`ranked` for a cut to the
  smallest arm): what a launcher runs first, in every arm, before the jobs that read them;
- `stats`: summary.json numbers (`<name>/<key>`) the comparison and the verdict show. The verdict
  compares a stat on its per-item values where the stage writes them (`<run>/<name>/items.jsonl`,
  rows of `id` and the stat's `of` field: a CI in summary.json too), else over seeds (each job's
  number one value: two or more seeds per arm);
- `run(ctx, inputs) -> StageResult`: new artifacts and summary entries.

To add a stage: a module with a `Stage` subclass registered by `@STAGES.register()`, named in
`plugins: [package.module]` (imported at start-up and whenever reports are made) unless it is
built in, and its name in `stages=[...]`. Its settings, if any, are the top-level section named by
`section` (default: its name).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.fields import Stat
from core.registry import Registry


@dataclass(frozen=True)
class Resources:
    """What a stage needs of a machine: the role keys of the models it loads (`model`,
    `respond.model`, `metrics.reward.model`, ...), whether it trains (`train.devices` x
    `train.num_nodes` GPUs), or neither (CPU only)."""

    models: tuple[str, ...] = ()
    train: bool = False

    @property
    def cpu_only(self) -> bool:
        return not self.models and not self.train


@dataclass
class StageResult:
    artifacts: dict[str, Any] = field(default_factory=dict)  # replace inputs of the same name
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json entries


class Stage:
    name: ClassVar[str]
    order: ClassVar[int] = 50
    part_of: ClassVar[str | None] = None
    always: ClassVar[bool] = False
    # Runs once summary.json is written (the report reads it); its entries update the file.
    final: ClassVar[bool] = False
    section: ClassVar[str | None] = None  # None: the stage's name, where the config has it
    Config: ClassVar[type | None] = None
    # Its settings are the scenario's own typed `Config` (a scenario's settings differ by scenario).
    scenario_settings: ClassVar[bool] = False
    needs: ClassVar[tuple[str, ...]] = ()
    produces: ClassVar[tuple[str, ...]] = ()
    stats: ClassVar[tuple[Stat, ...]] = ()

    def __init__(self, cfg: Any, run_cfg: Any):
        self.cfg = cfg  # an instance of `Config` (None when the stage has none)
        self.run_cfg = run_cfg  # the composed job config, read-only: what other roles are

    @classmethod
    def config_key(cls) -> str:
        return cls.section or cls.name

    @classmethod
    def selected(cls, stages: list[str]) -> bool:
        return (
            cls.always or cls.name in stages or (cls.part_of is not None and cls.part_of in stages)
        )

    def check(self, stages: list[str]) -> None:
        """Start-up checks against the job's selected stages (what this one needs from them):
        a ConfigError before any model loads."""

    def active(self, inputs: dict[str, Any]) -> bool:
        """Whether there is anything to do in this job (evaluate without tasks: no)."""
        return True

    def key(self, inputs: dict[str, Any]) -> str | None:
        return None

    def resources(self) -> Resources:
        return Resources()

    def arm_needs(self) -> tuple[str, ...]:
        return ()

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        raise NotImplementedError

    def after(self, summary: dict[str, Any], ctx: Any) -> None:
        """Called with the job's final summary (the report prints it)."""


STAGES: Registry[type[Stage]] = Registry(
    "stage",
    # The built-in stages, each in the package that owns its algorithm (imported on first lookup:
    # core names them, it does not import them).
    builtins=(
        "pipeline.stages",
        "evolvers.stages",
        "metrics.stages",
        "training.stages",
        "evaluation.stages",
        "reporting.stages",
    ),
)


def stage_order() -> list[type[Stage]]:
    return sorted(STAGES, key=lambda s: s.order)


def plan_for(stages: list[Stage], artifact: str | None = None) -> list[Stage]:
    """Of a job's stages (in order): all, or only those that `artifact` depends on."""
    if artifact is None:
        return list(stages)
    wanted, chosen = {artifact}, []
    for stage in reversed(stages):
        if wanted & set(stage.produces):
            chosen.append(stage)
            wanted |= set(stage.needs)
    return chosen[::-1]


def stage_names(stages: list[Stage]) -> list[str]:
    """The `stages=[...]` names that select `stages`."""
    names: list[str] = []
    for stage in stages:
        if not stage.always and (name := stage.part_of or stage.name) not in names:
            names.append(name)
    return names


def stat_for_stage(key: str) -> tuple[type[Stage], Stat] | None:
    """The registered stage Stat behind a summary key `<stage>/<key>`, if any."""
    name, _, rest = key.partition("/")
    if not rest or name not in STAGES:
        return None
    stage = STAGES.get(name)
    stat = next((s for s in stage.stats if s.key == rest), None)
    return (stage, stat) if stat else None
