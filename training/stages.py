"""The `train` stage: fine-tune the student on the selected records (training.run), cached as a
whole by everything the trained model depends on (`train_key`), so a job that trains the same model
as another one waits for it and reuses its export.

On several processes (one per GPU) rank 0 publishes the records and every rank trains on them
(training.ranks); `follow` is what a rank other than 0 runs instead of the job's stages.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from core.cache import file_lock, stable_hash
from core.dist import is_leader, launch_rank
from core.errors import NotCached, UserFacingError
from core.records import Record, hash_records
from core.schemas import TrainConfig
from core.stage import STAGES, Resources, Stage, StageResult
from engines.pool import model_identity
from engines.precision import resolve_precision
from training import ranks

log = logging.getLogger(__name__)

# Train settings that do not change the trained model, so not part of its cache key.
TRAIN_KEY_EXCLUDES = (
    "resume",
    "keep_checkpoints",
    "devices",
    "num_nodes",
    "save_every_n_steps",
    "save_every_n_minutes",
    "follower_timeout_min",
    "name",
    "student",  # the key holds the student's identity instead
)


def train_key(train_cfg: Any, student: Any, records: list[Record], seed: int) -> str:
    """The trained model's cache key: its settings (less TRAIN_KEY_EXCLUDES), the student's
    identity, the data, the seed and the loss."""
    node = train_cfg if OmegaConf.is_config(train_cfg) else OmegaConf.structured(train_cfg)
    settings = {
        k: v
        for k, v in OmegaConf.to_container(node, resolve=True).items()
        if k not in TRAIN_KEY_EXCLUDES
    }
    # What ran, not what was asked: `auto` trains in bf16 on one machine and fp32 on another.
    settings["precision"] = resolve_precision(settings.get("precision"))
    return stable_hash(
        {
            "train": settings,
            "student": model_identity(student),
            "data": hash_records(records),
            "seed": int(seed),
            # The loss: token-level over each optimizer step (training.module.step_loss).
            "loss": "step-token-mean",
        }
    )[:20]


@STAGES.register()
class Train(Stage):
    name = "train"
    order = 50
    # Checked at start-up; the key reads the composed section itself (`train_key`), as it
    # always has, so the caches of earlier runs stay hits.
    Config = TrainConfig
    needs = ("selected", "sets")
    produces = ("train_dir",)

    def resources(self) -> Resources:
        return Resources(train=True)

    def records(self, ctx: Any, inputs: dict[str, Any]) -> list[Record]:
        """The filter's selection; without a filter, the last set's usable records."""
        if "selected" in inputs:
            return inputs["selected"]
        sets = inputs.get("sets") or {}
        return ctx.usable(list(sets.values())[-1]) if sets else []

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        records = self.records(ctx, inputs)
        if is_leader():
            ranks.publish_records(ctx.dir, records)  # what the other ranks train on
        if not records:  # e.g. no AutoIF verifier survived: nothing to fine-tune on
            log.warning("train: no record to train on; skipped (evaluate sees the student)")
            return StageResult(summary={"train/skipped": "no records"})
        out, summary = train(ctx, self.run_cfg.train, records)
        link = ctx.dir / "train"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(out, target_is_directory=True)
        log.info("train: %s", ", ".join(f"{k}={v}" for k, v in summary.items()))
        return StageResult(artifacts={"train_dir": out}, summary=summary)


def train(ctx: Any, train_cfg: Any, records: list[Record]) -> tuple[Path, dict]:
    """(the trained model's folder, train/* numbers): from the cache, or trained here."""
    from training.run import ensure_export_stops, read_summary, train_sft

    student = ctx.role(train_cfg.student, "train.student")
    key = train_key(train_cfg, student, records, ctx.seed)
    out = Path(ctx.cfg.cache_dir).expanduser() / "train" / key
    # Another job training the same model: wait for it and reuse its export. Only rank 0 locks:
    # the other ranks of this job train together with it (training/ranks.py).
    lock = (
        file_lock(out.with_name(f".{key}.lock"), what=f"train ({key})")
        if is_leader()
        else contextlib.nullcontext()
    )
    with lock:
        summary = read_summary(out)
        if summary and (out / "hf" / "config.json").is_file():
            log.info("train: cache hit (%s)", out)
            if is_leader():  # an export from before exports stopped at the turn end
                ensure_export_stops(out / "hf")
        elif ctx.cache.read_only:
            raise NotCached(f"train: no trained model in the cache ({out})")
        else:
            ctx.release_engine()  # free the generation engine before training
            lg = ctx.tracker.lightning_logger() if ctx.tracker else None
            summary = train_sft(
                train_cfg,
                student,
                records,
                out,
                ctx.models_dir,
                ctx.seed,
                loggers=[lg] if lg else [],
            )
    return out, summary


def follow(ctx: Any) -> dict:
    """A rank other than 0: wait for rank 0's records, train with it, stop."""
    rank = launch_rank()
    log.info("rank %d: waiting for rank 0 to publish the training records", rank)
    state = ranks.wait_for_leader(ctx.dir, float(ctx.cfg.train.follower_timeout_min))
    if state["state"] == "failed":
        raise UserFacingError(f"rank {rank}: rank 0 failed ({state.get('error')}); stopping")
    if state["state"] == "train":
        train(ctx, ctx.cfg.train, ranks.train_records(ctx.dir, state))
    return {"status": "ok", "rank": rank}
