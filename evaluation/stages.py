"""The `evaluate` stage: lm-eval on this job's fine-tuned export (or `eval.model` / the untrained
student), and the pairwise judge against a reference model or another arm's trained model
(`eval.pairwise.against_arm`, from that arm's stage loop: pipeline.arms)."""

from __future__ import annotations

import logging
from typing import Any

from core.errors import DataError
from core.schemas import EvalConfig
from core.stage import STAGES, Resources, Stage, StageResult
from evaluation.run import eval_model_config, evaluate, pairwise, reference_model_config

log = logging.getLogger(__name__)


@STAGES.register()
class Evaluate(Stage):
    name = "evaluate"
    order = 60
    section = "eval"
    Config = EvalConfig
    needs = ("train_dir",)
    produces = ("eval",)

    def active(self, inputs: dict[str, Any]) -> bool:
        return bool(self.cfg.tasks) or self.cfg.pairwise.enabled

    def resources(self) -> Resources:
        roles = ["train.student"]
        if self.cfg.pairwise.enabled:
            roles.append("eval.pairwise.judge")
        return Resources(models=tuple(roles))

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        trained = inputs.get("train_dir")
        model_cfg = eval_model_config(ctx.cfg, trained / "hf" if trained else None)
        log.info("evaluate: %s on %s", model_cfg.name, ", ".join(self.cfg.tasks))
        numbers: dict = {"eval/model": str(model_cfg.name)}
        if self.cfg.tasks:
            numbers |= evaluate(
                ctx.cfg.eval,
                model_cfg,
                ctx.engines,
                ctx.dir / "eval",
                ctx.cfg.cache_dir,
                ctx.seed,
                sandbox=ctx.sandbox,
            )
        if self.cfg.pairwise.enabled:
            against = self.against_arm(ctx)
            if against is not False:
                numbers |= pairwise(ctx.cfg, model_cfg, ctx.engines, ctx.dir / "eval", against)
        log.info("evaluate: %s", ", ".join(f"{k}={v}" for k, v in numbers.items()))
        return StageResult(artifacts={"eval": numbers}, summary=numbers)

    def arm_needs(self) -> tuple[str, ...]:
        pairwise = self.cfg.pairwise
        return ("train_dir",) if pairwise.enabled and pairwise.against_arm else ()

    def against_arm(self, ctx: Any) -> Any:
        """`eval.pairwise.against_arm`: the other arm's trained model (its job's, from the
        cache, or trained here once); False for the arm itself (it is the reference); None when
        unset (`eval.pairwise.against` applies)."""
        changes = self.cfg.pairwise.against_arm
        if not changes:
            return None
        overrides = [c.strip() for c in str(changes).split(" ") if c.strip()]
        if ctx.arms.is_this_job(overrides):
            log.info("pairwise: this job is the reference arm (%s); no judge", changes)
            return False
        train_dir = ctx.arm(overrides).artifact("train_dir")
        if train_dir is None:
            raise DataError(f"eval.pairwise.against_arm={changes}: that arm trained no model")
        return reference_model_config(ctx.cfg, str(train_dir / "hf"))
