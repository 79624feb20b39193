"""The reporting stages: `tables` (every set to the tracker: W&B tables and numbers), `summary`
(summary.json's numbers, with a 95% CI beside every number that has per-item data), and `report`
(this job's report.md and plots, after summary.json is written)."""

from __future__ import annotations

import logging
from typing import Any

from core.stage import STAGES, Stage, StageResult
from evolvers.stages import effective_rounds
from reporting.summary import build_summary, hardware_facts, print_summary

log = logging.getLogger(__name__)


@STAGES.register()
class Tables(Stage):
    name = "tables"
    order = 35
    always = True
    needs = ("sets", "scores")

    def active(self, inputs: dict[str, Any]) -> bool:
        return bool(inputs.get("sets")) and "seeds" in inputs

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        scores = inputs.get("scores") or {}
        if ctx.tracker is not None:
            for name, records in inputs["sets"].items():
                ctx.tracker.log_set(name, ctx.metrics.get(name, {}), records, scores.get(name, {}))
        return StageResult()


@STAGES.register()
class Summary(Stage):
    """The job's numbers: the per-set counts and scores (metrics.json), the engines and the
    cache, the hardware, what every stage reported, and the intervals (reporting.items),
    computed from the files once the work is done: a failure there is logged and recorded
    (`intervals_error`), never the end of a finished run."""

    name = "summary"
    order = 80
    always = True
    needs = ("seeds", "rounds", "summary")

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        from reporting.items import intervals, job_items, selected_means

        rounds = inputs.get("rounds") or effective_rounds(ctx.scenario, ctx.cfg.rounds)
        seeds = inputs.get("seeds") or []
        out = build_summary(ctx.cfg, rounds, ctx.metrics, ctx.engines, ctx.cache, len(seeds))
        out.update(hardware_facts(ctx.cfg))
        out.update(inputs.get("summary") or {})
        try:
            items = job_items(ctx.dir)  # the per-item files, read once
            extra: dict = {}
            if "filter/kept" in out:  # the data metrics of what the filter kept
                extra.update(selected_means(items))
            extra.update(intervals(ctx.dir, {**out, **extra}, items=items))
            out.update(extra)
        except Exception as e:
            log.exception("intervals: not computed")
            out["intervals_error"] = f"{type(e).__name__}: {e}"
        return StageResult(summary=out)


@STAGES.register()
class Report(Stage):
    """report.md and plots/ for this job (reporting.compare), once summary.json is written."""

    name = "report"
    order = 90
    final = True
    needs = ("summary",)

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        from reporting.compare import compare

        compare([ctx.dir], ctx.dir, quiet=True)
        return StageResult()

    def after(self, summary: dict, ctx: Any) -> None:
        print_summary(summary, ctx.dir)
