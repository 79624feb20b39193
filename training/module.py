"""A LightningModule around an HF causal LM for SFT (full or LoRA), with the paper's optimiser:
AdamW, cosine decay after linear warm-up."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from core.errors import unknown_option
from core.schemas import SCHEDULERS
from core.signals import check_interrupt


def loss_scale(accumulate: int, world: int, deepspeed: bool) -> int:
    """What undoes the divisions the loss meets on its way to the gradients: Lightning divides
    by `accumulate`, DeepSpeed's engine.backward divides by its gradient_accumulation_steps (the
    same number) again, and DDP / ZeRO average the gradients over `world` ranks."""
    return accumulate * world * (accumulate if deepspeed else 1)


def step_loss(
    model: Any, batch: dict[str, torch.Tensor], scale: int
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(the loss to back-propagate, this micro-batch's mean token loss for the logs, the logits'
    dtype). With `step_tokens` (training.data.WindowBatchSampler) the loss is the micro-batch's
    summed token loss over the step's target tokens, times `scale` (`loss_scale`), so one
    optimizer step
    is the mean over every target token of the step, as LLaMA-Factory trains. Without it, HF's
    micro-batch mean."""
    labels = batch["labels"]
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1]
    targets = labels[:, 1:].to(logits.device)
    total = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    n = (targets != -100).sum().clamp(min=1)
    mean = total / n
    step_tokens = batch.get("step_tokens")
    loss = mean if step_tokens is None else total / step_tokens.clamp(min=1) * scale
    return loss, mean.detach(), str(out.logits.dtype).removeprefix("torch.")


def make_optimizer(params: list, lr: float, weight_decay: float, offload: bool) -> Any:
    """AdamW; with ZeRO's optimizer offload, DeepSpeed's CPU Adam, the same AdamW update computed
    on the CPU where the offloaded states live (DeepSpeed refuses a torch optimizer there:
    `zero_force_ds_cpu_optimizer`)."""
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, lr=lr, weight_decay=weight_decay, adamw_mode=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class SFTModule(pl.LightningModule):
    def __init__(
        self,
        model_path: str,
        cfg: Any,
        accumulate: int = 1,
        zero_stage: int = 0,
        offload: bool = False,
    ):
        super().__init__()
        self.model_path = model_path
        self.cfg = cfg
        self.accumulate = accumulate
        self.zero_stage = zero_stage
        self.deepspeed = zero_stage > 0
        self.offload = offload
        self.model = None
        # Under ZeRO-3, transformers' own DeepSpeed integration reads this (through a weak
        # reference) to build the model partitioned and load each rank's shard of the weights.
        self._hf_deepspeed = None
        self._t_last: float | None = None
        # The dtype of the first training forward's logits: what the arithmetic really ran in
        # (bfloat16 under bf16-mixed autocast, float32 under 32-true).
        self.compute_dtype: str | None = None

    def configure_model(self) -> None:
        # Called by Lightning inside the strategy's init context (ZeRO-3 shards from the start).
        if self.model is not None:
            return
        if self.zero_stage == 3:
            # Lightning calls this inside deepspeed.zero.Init, which creates every parameter
            # empty on this rank; a plain from_pretrained then fails to copy the checkpoint into
            # them ("size mismatch ... torch.Size([0])"). With HfDeepSpeedConfig alive,
            # transformers builds the model under zero.Init itself and loads the weights shard by
            # shard (GatheredParameters), so no rank holds the whole model.
            from transformers.integrations.deepspeed import HfDeepSpeedConfig

            self._hf_deepspeed = HfDeepSpeedConfig(self.trainer.strategy.config)
        self.model = self.build_model()

    def build_model(self) -> Any:
        """The student as trained: the HF model, with LoRA adapters when `method: lora`."""
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        model.train()  # from_pretrained returns eval mode (dropout off)
        if self.cfg.get("gradient_checkpointing"):
            # Non-reentrant: works with LoRA's frozen inputs without enable_input_require_grads.
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            model.config.use_cache = False
        if self.cfg.method == "lora":
            from peft import LoraConfig, get_peft_model

            lora = self.cfg.lora
            model = get_peft_model(
                model,
                LoraConfig(
                    r=int(lora.r),
                    lora_alpha=int(lora.alpha),
                    lora_dropout=float(lora.dropout),
                    target_modules=lora.target_modules,
                    task_type="CAUSAL_LM",
                ),
            )
        return model

    def unsharded_model(self) -> Any:
        """A full copy of the student on the CPU, outside any ZeRO-3 partitioning, for the
        export to load the consolidated weights into."""
        if self._hf_deepspeed is not None:
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            unset_hf_deepspeed_config()
            self._hf_deepspeed = None
        return self.build_model()

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        world = self.trainer.world_size if self._trainer is not None else 1
        scale = loss_scale(self.accumulate, world, self.deepspeed)
        loss, mean, logits_dtype = step_loss(self.model, batch, scale)
        if self.compute_dtype is None:
            self.compute_dtype = logits_dtype
        # Averaged over ranks (each logs its own micro-batch's mean): the loss of the global batch.
        self.log(
            "train/loss",
            mean,
            prog_bar=True,
            on_step=True,
            batch_size=len(batch["labels"]),
            sync_dist=world > 1,
        )
        now = time.perf_counter()
        if self._t_last is not None:
            tokens = int(batch["attention_mask"].sum())
            self.log("train/tokens_per_s", tokens / max(now - self._t_last, 1e-9), on_step=True)
        self._t_last = now
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = make_optimizer(
            params, float(self.cfg.lr), float(self.cfg.weight_decay), offload=self.offload
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(float(self.cfg.warmup_ratio) * total))
        sched = make_scheduler(str(self.cfg.scheduler), opt, warmup, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def make_scheduler(name: str, opt: Any, warmup: int, total: int) -> Any:
    """`train.scheduler` (core.schemas.SCHEDULERS, checked at start-up): linear warm-up, then
    cosine or linear decay; an unknown name is an error, never a silent default."""
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    schedules = {
        "cosine": get_cosine_schedule_with_warmup,
        "linear": get_linear_schedule_with_warmup,
    }
    if name not in schedules:
        raise unknown_option("train.scheduler", name, SCHEDULERS)
    return schedules[name](opt, warmup, total)


class StopOnSignal(pl.Callback):
    """Between training steps, re-raise a Ctrl-C/SIGTERM whose exception got lost inside a step
    (pipeline/signals.py), before Lightning's own SIGTERM stop, which exits with code 0."""

    def on_train_batch_start(self, *args: Any) -> None:
        check_interrupt()

    def on_train_batch_end(self, *args: Any) -> None:
        check_interrupt()
