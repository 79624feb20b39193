"""The pipeline's own stages: `seeds` (every job: the seed set) and `export` (the run's sets as a
Hugging Face dataset folder, pipeline.export)."""

from __future__ import annotations

import logging
from typing import Any

from core.data import load_seeds
from core.errors import UserFacingError
from core.records import write_jsonl_atomic
from core.schemas import DataConfig, ExportConfig
from core.stage import STAGES, Stage, StageResult

log = logging.getLogger(__name__)


@STAGES.register()
class Seeds(Stage):
    """The seed instructions (`data`): `seeds.jsonl`, and the `input` set of a job that does not
    evolve."""

    name = "seeds"
    order = 0
    always = True
    section = "data"
    Config = DataConfig
    produces = ("seeds", "sets")

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        seeds = load_seeds(ctx.cfg.data, ctx.seed)
        write_jsonl_atomic(ctx.dir / "seeds.jsonl", seeds)
        log.info("seeds: %d records from %s", len(seeds), ctx.cfg.data.name)
        return StageResult(artifacts={"seeds": seeds, "sets": {"input": seeds}})


@STAGES.register()
class Export(Stage):
    """The run's sets as a dataset folder, pushed when `export.push` names a repo; a failed
    export or push is logged and recorded (`export/error`, `export/push_error`), the run stays a
    success: its sets are safe in their JSONL files."""

    name = "export"
    order = 85
    always = True
    Config = ExportConfig
    needs = ("summary",)

    def active(self, inputs: dict[str, Any]) -> bool:
        return bool(self.cfg.dataset)

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        from pipeline.export import export_dataset, push

        try:
            folder = export_dataset(ctx.dir, inputs.get("summary") or {})
        except Exception as e:
            log.exception("export: the dataset folder was not written")
            return StageResult(summary={"export/error": f"{type(e).__name__}: {e}"})
        if folder is None:
            return StageResult()
        out: dict[str, Any] = {"export/dataset": folder.name}
        if self.cfg.push:
            try:
                out["export/pushed"] = push(folder, str(self.cfg.push), bool(self.cfg.private))
            except UserFacingError as e:
                log.error("export: %s", e)
                out["export/push_error"] = str(e)
        return StageResult(summary=out)
