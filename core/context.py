"""The stage context: what a job's stages share, handed to every stage (core.stage) instead of the
runner.

A stage gets the composed config (read-only; a stage reads its own settings from its typed
`Config`, handed to it at construction), the run folder, the step cache, the run's services (a
cached `generator` over the engine pool, forward-pass model handles that load once per stage, the
scenario, the sandbox, the tracker), a sink for its per-set counts (metrics.json), and `arm`:
another arm of the sweep, whose artifacts come from the same stage loop (pipeline.arms). Nothing in
it lets a stage change the config or reach the runner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cache import StepCache
from core.config import role_model
from core.records import write_json_atomic

# generate([(id, prompt)], max_tokens=None) -> {id: Generation}
Generate = Callable[..., dict[str, Any]]


@dataclass
class StageContext:
    cfg: Any  # the composed config, read-only
    dir: Path  # the run folder
    cache: StepCache
    # (step, model_cfg, sampling settings, desc) -> Generate: the run's cached generation, sampled
    # with per-item seeds when the settings' temperature is above 0.
    generator: Callable[[str, Any, Any, str], Generate]
    # (step, model_cfg, [(id, prompt, Sampling)], desc) -> {id: Generation}: per-item settings.
    generate: Callable[..., dict[str, Any]]
    release_engine: Callable[[], None]  # free the generation engine before a forward-pass model
    # model_cfg -> the generation engine for it (loaded once, shared with generation): for
    # forward passes an engine serves itself (IFD from vLLM's prompt log-probabilities).
    engine_for: Callable[[Any], Any] | None = None
    engines: Any = None  # the engine pool (lm-eval's model runs on it)
    scenario: Any = None  # the job's evolution scenario (evolvers.base)
    sandbox: Any = None  # the sandbox service (AutoIF's verifiers, the code benchmarks)
    tracker: Any = None  # W&B or nothing (reporting.tracking)
    # The other arms of this job's sweep (pipeline.arms.Arms): `arm`, `arm_sizes`.
    arms: Any = None
    metrics: dict[str, dict] = field(default_factory=dict)  # set name -> {stage: counts}
    load_seconds: float = 0.0  # forward-pass models started through `model`
    _models: dict[str, Any] = field(default_factory=dict)
    # (set name, stage, counts) -> None: called after each count is recorded (logging)
    on_counts: Callable[[str, str, dict], None] | None = None

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def models_dir(self) -> str:
        return str(self.cfg.models_dir)

    def role(self, value: Any, key: str) -> Any:
        """A role's model config: null = the run's model, a conf/model name, or a mapping."""
        return role_model(self.cfg, value, key)

    def add_metrics(self, set_name: str, stage: str, counts: dict) -> None:
        """A stage's counts for one set: `<set>/metrics.json › <stage>` (and summary.json)."""
        self.metrics.setdefault(set_name, {})[stage] = counts
        write_json_atomic(self.dir / set_name / "metrics.json", self.metrics[set_name])
        if self.on_counts:
            self.on_counts(set_name, stage, counts)

    def model(self, key: str, load: Callable[[], Any]) -> Any:
        """A forward-pass model (IFD scorer, embedder, reward model), loaded on first use and
        kept until `close_models`; the generation engine is released first (one model in
        memory at a time)."""
        if key not in self._models:
            self.release_engine()
            t0 = time.perf_counter()
            self._models[key] = load()
            self.load_seconds += time.perf_counter() - t0
        return self._models[key]

    def close_models(self) -> None:
        for m in self._models.values():
            m.close()
        self._models.clear()

    def arm(self, overrides: list[str]) -> Any:
        """Another arm of the sweep (this job's overrides with `overrides`): its
        `.artifact(name)` runs the same stage loop up to the stage that produces `name`."""
        return self.arms.arm(overrides)

    def arm_sizes(self, artifact: str, own: int, cut: str) -> dict[str, int]:
        """{arm value: its `artifact` (a count)} over the sweep's values of
        `filter.equal_across`, this job's own being `own`; `cut` names the setting asking."""
        return self.arms.sizes(artifact, own, cut)

    def usable(self, records: list) -> list:
        """The records the scenario can use downstream (its failures left out)."""
        if self.scenario is None:
            return list(records)
        return [r for r in records if self.scenario.usable(r)]


def one_line(counts: dict) -> str:
    """A stage's counts as one log line (nested mappings left out)."""
    parts = []
    for k, v in counts.items():
        if isinstance(v, float):
            v = round(v, 2)
        if not isinstance(v, dict):
            parts.append(f"{k}={v}")
    return ", ".join(parts)
