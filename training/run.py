"""The train stage: records -> SFT with Lightning (plain or DeepSpeed ZeRO) -> an HF checkpoint
(`hf/`) that vLLM, transformers and lm-evaluation-harness load."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from core.errors import ConfigError, unknown_option
from core.records import Record, hash_records, write_json_atomic
from core.schemas import STRATEGIES
from core.signals import Interrupted
from engines.hf import load_tokenizer
from engines.models import resolve_model_path
from engines.precision import resolve_precision
from engines.turns import eos_ids, turn_end_token
from training.data import SFTDataModule, ensure_chat_template

log = logging.getLogger(__name__)


def zero_stage(strategy: str) -> int | None:
    return {"deepspeed_stage_2": 2, "deepspeed_stage_3": 3, "deepspeed_stage_3_offload": 3}.get(
        strategy
    )


def make_strategy(name: str, require_gpu: bool = True, micro_batch_size: int = 1):
    """Lightning's own strategies; DeepSpeed ZeRO only where CUDA GPUs are. DeepSpeed is told the
    micro-batch size: Lightning would read it off the loader's batch sampler, and ours
    (training.data.WindowBatchSampler) sizes batches by optimizer step."""
    if name not in STRATEGIES:
        raise unknown_option("train.strategy", name, STRATEGIES)
    stage = zero_stage(name)
    if stage is None:
        return name
    if require_gpu and not torch.cuda.is_available():
        raise ConfigError(
            f"train.strategy={name} (DeepSpeed ZeRO-{stage}) needs CUDA GPUs and this machine has "
            "none; use train=full (or train=cpu_tiny, train=lora) on CPU"
        )
    from pytorch_lightning.strategies import DeepSpeedStrategy

    offload = name.endswith("_offload")
    return DeepSpeedStrategy(
        stage=stage,
        offload_optimizer=offload,
        offload_parameters=offload,
        logging_batch_size_per_gpu=int(micro_batch_size),
    )


def train_sft(
    cfg: Any,
    student_cfg: Any,
    records: list[Record],
    out_dir: Path,
    models_dir: str,
    seed: int,
    loggers: list | None = None,
) -> dict:
    """Fine-tune `student_cfg` on `records` into `out_dir` (hf/, checkpoints/, logs/); `loggers`
    are extra Lightning loggers (W&B) beside the CSV log."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from training.module import SFTModule, StopOnSignal

    out_dir = Path(out_dir)
    strategy = make_strategy(cfg.strategy, micro_batch_size=int(cfg.micro_batch_size))
    precision = resolve_precision(cfg.get("precision"))
    pl.seed_everything(seed, workers=True)
    path = resolve_model_path(student_cfg, models_dir)
    tokenizer = load_tokenizer(path, padding_side="right")
    # A base student's format: train.chat_template, else its model config's (conf/model/*_base).
    ensure_chat_template(tokenizer, cfg.get("chat_template") or student_cfg.get("chat_template"))
    turn_end_token(tokenizer)  # a template the export could not stop on fails before training
    world = world_size(cfg)
    accumulate = max(1, int(cfg.effective_batch_size) // (int(cfg.micro_batch_size) * world))
    deepspeed = zero_stage(cfg.strategy) is not None
    data = SFTDataModule(
        tokenizer,
        records,
        int(cfg.cutoff_len),
        int(cfg.micro_batch_size),
        seed,
        accumulate,
        whole_steps=deepspeed,  # DeepSpeed's step counter runs across epochs (WindowBatchSampler)
    )
    data.setup()  # encode now: bad data fails before a model is loaded
    examples, stats = data.examples, data.stats
    log.info("train: %s", ", ".join(f"{k}={v}" for k, v in stats.as_dict().items()))

    resolved = OmegaConf.to_container(cfg, resolve=True)
    data_hash = hash_records(records)
    write_json_atomic(
        out_dir / "config.json",
        {
            "train": resolved,
            "student": student_cfg.name,
            "student_path": path,
            "data_sha256": data_hash,
            "examples": len(examples),
            "accumulate_grad_batches": accumulate,
        },
    )
    ckpt_dir = out_dir / "checkpoints"
    module = SFTModule(
        path,
        cfg,
        accumulate,
        zero_stage=zero_stage(cfg.strategy) or 0,
        offload=cfg.strategy.endswith("_offload"),
    )
    trainer = pl.Trainer(
        max_epochs=int(cfg.epochs),
        max_steps=int(cfg.max_steps) if cfg.get("max_steps") else -1,
        accumulate_grad_batches=accumulate,
        precision=precision,
        strategy=strategy,
        devices=cfg.devices,
        num_nodes=int(cfg.num_nodes),
        gradient_clip_val=float(cfg.max_grad_norm) if cfg.get("max_grad_norm") else None,
        # One CSV version per (re)start, so a resumed run keeps the earlier logs.
        logger=[CSVLogger(out_dir, name="logs"), *(loggers or [])],
        callbacks=[
            # One resumable checkpoint, last.ckpt, rewritten every `save_every_n_steps` or every
            # `save_every_n_minutes` (sized to preemption: a ZeRO-3 state of an 8B student with
            # its optimizer is ~120 GB): a numbered copy beside it would double the disk.
            ModelCheckpoint(
                dirpath=ckpt_dir, save_last=True, save_top_k=0, **checkpoint_every(cfg)
            ),
            LearningRateMonitor(logging_interval="step"),
            StopOnSignal(),
        ],
        log_every_n_steps=1,
        # The data's sampler shards optimizer steps across ranks itself (WindowBatchSampler).
        use_distributed_sampler=False,
        default_root_dir=out_dir,
        enable_model_summary=False,
    )
    last = ckpt_dir / "last.ckpt"
    resume_from = str(last) if cfg.get("resume") and last.exists() else None
    if resume_from:
        log.info("train: resuming from %s", resume_from)
    start_step = _checkpoint_step(last) if resume_from else 0
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    except SIGTERMException:
        # Lightning's own SIGTERM stop is a SystemExit with code 0: not a success here.
        raise Interrupted(signal.SIGTERM) from None
    if not zero_stage(cfg.strategy):
        trainer.save_checkpoint(last)  # the final state, so a longer rerun resumes from here

    hf_dir = out_dir / "hf"
    dtype = export_dtype(cfg.get("export_dtype", "auto"), str(trainer.precision))
    export_hf(trainer, module, tokenizer, hf_dir, zero_stage(cfg.strategy), dtype)
    loss = trainer.callback_metrics.get("train/loss")
    summary = {
        "train/student": student_cfg.name,
        "train/method": cfg.method,
        "train/strategy": cfg.strategy,
        "train/zero_stage": zero_stage(cfg.strategy) or 0,
        "train/steps": int(trainer.global_step),
        # Read back from what ran: Lightning's precision and the dtype the forward pass computed in.
        "train/precision": str(trainer.precision),
        "train/compute_dtype": module.compute_dtype,
        "train/export_dtype": str(dtype).removeprefix("torch."),
        "train/world_size": world,
        "train/resumed_from_step": start_step,
        "train/final_loss": float(loss) if loss is not None else None,
        "train/data_sha256": data_hash,
        **{f"train/{k}": v for k, v in stats.as_dict().items()},
    }
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "summary.json", summary)
    release_training(trainer, module, deepspeed)
    if trainer.is_global_zero and not cfg.get("keep_checkpoints"):
        # The export is the result; the optimizer state is only needed to resume a run that did
        # not finish. Deleted only after summary.json is written, so a kill before that resumes.
        for p in (ckpt_dir, out_dir / "final_zero"):
            shutil.rmtree(p, ignore_errors=True)
        log.info("train: removed %s (train.keep_checkpoints=false)", ckpt_dir)
    return summary


def release_training(trainer: Any, module: Any, deepspeed: bool) -> None:
    """Free what training holds on the GPU before the next stage loads a model: Lightning's
    teardown leaves a DeepSpeed engine's ZeRO partitions and optimizer state in place, so the
    engine is destroyed, the module's model dropped and the allocator's cache returned."""
    from engines.memory import free_gpu_memory

    engine = getattr(trainer.strategy, "model", None)
    destroy = getattr(engine, "destroy", None)
    if deepspeed and callable(destroy):
        destroy()
    module.model = None
    free_gpu_memory()


def world_size(cfg: Any) -> int:
    """The processes training together: devices per node (every visible GPU for `auto`, one
    without GPUs) times `num_nodes`. The gradient accumulation that reaches the effective batch
    follows from it, so 2 nodes x 8 GPUs accumulate half as much as one node."""
    if cfg.devices == "auto":
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
    else:
        devices = int(cfg.devices)
    return max(1, devices) * max(1, int(cfg.num_nodes))


def checkpoint_every(cfg: Any) -> dict:
    """ModelCheckpoint's interval: `save_every_n_minutes` (wall clock) when set, else
    `save_every_n_steps` (0: only the final state). Lightning takes one of the two."""
    from datetime import timedelta

    minutes = float(cfg.get("save_every_n_minutes") or 0)
    if minutes > 0:
        return {"train_time_interval": timedelta(minutes=minutes)}
    return {"every_n_train_steps": int(cfg.get("save_every_n_steps") or 0)}


def export_dtype(value: str | None, precision: str) -> torch.dtype:
    """The dtype the export is written in: `auto` is the one training computed in (bf16-mixed
    and bf16-true: bfloat16, 16-mixed: float16, else float32), so an 8B student exports at
    16 GB, not the 32 GB of its fp32 master weights; or a dtype by name."""
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if value in (None, "auto"):
        if precision.startswith("bf16"):
            return torch.bfloat16
        return torch.float16 if precision.startswith("16") else torch.float32
    if value not in names:
        raise ConfigError(f"train.export_dtype={value}: one of auto, {', '.join(names)}")
    return names[value]


def _checkpoint_step(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False).get("global_step", 0))
    except Exception:
        return 0


def export_hf(
    trainer: Any,
    module: Any,
    tokenizer: Any,
    hf_dir: Path,
    stage: int | None,
    dtype: torch.dtype = torch.float32,
) -> None:
    """An HF checkpoint beside its tokenizer and chat template; LoRA merged, ZeRO consolidated.
    Called on every rank: a ZeRO checkpoint is saved by all ranks together (each writes its shard
    and Lightning ends the save in a barrier), then rank 0 alone writes the export while the
    others wait at a barrier, so no rank runs ahead of a half-written `hf/`."""
    if stage:
        ckpt = hf_dir.parent / "final_zero"
        trainer.save_checkpoint(ckpt)  # collective: every rank must call it
    if trainer.is_global_zero:
        _write_export(module, tokenizer, hf_dir, stage, dtype)
    trainer.strategy.barrier("export_hf")


def _write_export(
    module: Any,
    tokenizer: Any,
    hf_dir: Path,
    stage: int | None,
    dtype: torch.dtype = torch.float32,
) -> None:
    tmp = hf_dir.with_name(hf_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = module.model
    if stage:
        from pytorch_lightning.utilities.deepspeed import (
            convert_zero_checkpoint_to_fp32_state_dict,
        )

        fp32 = hf_dir.parent / "final_fp32.pt"
        state = convert_zero_checkpoint_to_fp32_state_dict(hf_dir.parent / "final_zero", fp32)
        fp32.unlink(missing_ok=True)  # loaded below; the export holds the same weights
        weights = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
        if stage == 3:
            # The trained module's parameters are this rank's shards: load into a full copy.
            model = module.unsharded_model()
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if not _tied(model, k)]:
            raise RuntimeError(
                f"export: the ZeRO checkpoint does not match the model (missing {missing[:5]}, "
                f"unexpected {unexpected[:5]})"
            )
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    # The student learnt to end its answers with the template's turn end, not the base EOS: the
    # export stops there first (LLaMA-Factory's stop-word replacement), and on the base EOS too.
    turn, turn_id = turn_end_token(tokenizer)
    stops = [turn_id, *eos_ids(tokenizer, getattr(model, "generation_config", None))]
    stops = list(dict.fromkeys(stops))
    model = model.to(dtype)  # training is over: the fp32 master copy is not needed after this
    model.save_pretrained(tmp, safe_serialization=True)
    write_generation_config(model, tmp, stops)
    tokenizer.padding_side = "left"  # what generation wants
    tokenizer.eos_token = turn
    tokenizer.save_pretrained(tmp)
    if hf_dir.exists():
        shutil.rmtree(hf_dir)
    os.replace(tmp, hf_dir)
    log.info("train: exported %s", hf_dir)


def ensure_export_stops(hf_dir: Path) -> bool:
    """An export made before exports stopped at the turn end (a cached train folder): give it
    the turn end as its EOS and first stop id, as `_write_export` does now, so every engine and
    lm-eval's own hf backend stop there. True if it was patched; an export that already stops
    there, or whose template has no special turn end, is left alone."""
    from transformers import GenerationConfig

    hf_dir = Path(hf_dir)
    try:
        tokenizer = load_tokenizer(str(hf_dir))
        turn, turn_id = turn_end_token(tokenizer)
    except Exception as e:  # no tokenizer to read, or no special turn end: nothing to patch
        log.warning("train: %s left as it is (%s: %s)", hf_dir, type(e).__name__, e)
        return False
    path = hf_dir / "generation_config.json"
    gen = GenerationConfig.from_pretrained(hf_dir) if path.is_file() else GenerationConfig()
    stops = eos_ids(tokenizer, gen)
    if tokenizer.eos_token == turn and stops[:1] == [turn_id]:
        return False
    gen.eos_token_id = list(dict.fromkeys([turn_id, *stops]))
    gen.save_pretrained(hf_dir)
    tokenizer.eos_token = turn
    tokenizer.save_pretrained(hf_dir)
    log.info("train: the cached export %s now stops at %s", hf_dir, turn)
    return True


def write_generation_config(model: Any, out_dir: Path, eos: list[int]) -> None:
    """generation_config.json with `eos` as its eos_token_id: transformers' generate and vLLM
    (its sampling params take the file's eos ids as stop ids) both stop on every one of them."""
    import copy

    from transformers import GenerationConfig

    gen = getattr(model, "generation_config", None)
    gen = (
        copy.deepcopy(gen) if gen is not None else GenerationConfig.from_model_config(model.config)
    )
    gen.eos_token_id = list(eos)
    gen.save_pretrained(out_dir)


def _tied(model: Any, key: str) -> bool:
    """Whether a state-dict key is a tied copy (e.g. lm_head.weight = embed_tokens.weight)
    that a consolidated checkpoint may leave out."""
    return key.endswith("lm_head.weight") and bool(
        getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    )


def read_summary(out_dir: Path) -> dict | None:
    p = Path(out_dir) / "summary.json"
    return json.loads(p.read_text()) if p.is_file() else None
