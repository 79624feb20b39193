"""A job's services, built once per job and handed to every stage on its StageContext: the step
cache, the engine pool and its cached `generator`, the scenario, the sandbox service, the
tracker. Each arm run inside a job (pipeline.arms) has its own, over its own cache (read-only with
`arms.missing=fail`)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.cache import StepCache
from core.context import StageContext, one_line
from engines.base import Chat, Generation, Sampling
from engines.pool import EnginePool
from evolvers.base import build_scenario
from reporting.tracking import Tracker
from sandbox import SandboxService

log = logging.getLogger(__name__)


def sampling(cfg: Any, seed: int | None = None) -> Sampling:
    """Sampling settings from a `generation.*` section (checked against DecodingConfig)."""
    return Sampling(
        temperature=float(cfg.temperature),
        top_p=float(cfg.top_p),
        max_tokens=int(cfg.max_tokens),
        seed=seed,
    )


def item_seed(run_seed: int, item_id: str) -> int:
    """A per-item sampling seed that survives resume and reordering."""
    digest = hashlib.sha256(f"{run_seed}:{item_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def make_generator(pool: EnginePool, run_seed: int):
    def generator(step: str, model_cfg: Any, params: Any, desc: str):
        """A `generate(items)` for stages: [(id, prompt)] -> {id: Generation}, cached.
        `generate(items, max_tokens=n)` replaces `params.max_tokens` for that call."""

        def generate(
            items: list[tuple[str, Chat | str]], max_tokens: int | None = None
        ) -> dict[str, Generation]:
            greedy = params.temperature == 0
            full = [
                (i, p, sampling(params, None if greedy else item_seed(run_seed, i)))
                for i, p in items
            ]
            if max_tokens:
                full = [(i, p, dataclasses.replace(s, max_tokens=max_tokens)) for i, p, s in full]
            return pool.generate(step, model_cfg, full, desc=desc)

        return generate

    return generator


def build_context(
    cfg: Any, run_dir: Path, tracker: Tracker | None, cache_only: bool
) -> StageContext:
    cache = StepCache(Path(cfg.cache_dir), read_only=cache_only)
    # A data-parallel server's log goes to the run folder (a node's /tmp is lost with it).
    pool = EnginePool(cfg.engine, cache, cfg.models_dir, log_dir=str(run_dir))
    # AutoIF's verifiers and the code benchmarks: one pooled service, its results in this job's
    # cache (so a resumed run replays them); the runner closes it.
    sandbox = SandboxService(cache=cache)
    return StageContext(
        cfg=cfg,
        dir=Path(run_dir),
        cache=cache,
        generator=make_generator(pool, int(cfg.seed)),
        generate=pool.generate,
        release_engine=pool.release,
        engine_for=pool.engine_for,
        engines=pool,
        scenario=build_scenario(cfg.scenario, sandbox=sandbox),
        sandbox=sandbox,
        tracker=tracker or Tracker(OmegaConf.create({"logger": {"name": "none"}}), Path(run_dir)),
        on_counts=lambda name, stage, counts: log.info("%s %s: %s", name, stage, one_line(counts)),
    )
