"""The stage context: what the runner hands a stage instead of itself.

A stage (a scenario's round, a metric, the filter, training, evaluation) gets the composed config
(read-only), the run folder, the step cache, a cached `generator`, forward-pass model handles that
load once per stage, and a sink for its counts. Nothing in it lets a stage change the config or
reach the runner; the generation services are callables built by the runner on the engine pool.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.cache import StepCache
from core.config import role_model

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
    sink: Callable[[str, str, dict], None]  # (set name, stage, counts) -> metrics.json
    # model_cfg -> the generation engine for it (loaded once, shared with generation): for
    # forward passes an engine serves itself (IFD from vLLM's prompt log-probabilities).
    engine_for: Callable[[Any], Any] | None = None
    load_seconds: float = 0.0  # forward-pass models started through `model`
    _models: dict[str, Any] = field(default_factory=dict)

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
        self.sink(set_name, stage, counts)

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
