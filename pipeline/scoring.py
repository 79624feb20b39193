"""The `score` and `filter` stages over the metric registry (`metrics.base.METRICS`).

Score: every enabled metric, metric by metric over all sets in the metrics' `order`, so each model
loads once per stage (the generation-based metrics while the engine is up, then the embedder, then
the forward-pass models); per record into `<set>/scores.jsonl`, set summaries into metrics.json.
Filter: `filter.keep_ratio` of one set by a registered field, into `selected.jsonl`.
"""

from __future__ import annotations

from typing import Any

from core.context import StageContext
from core.records import Record, write_jsonl_atomic
from metrics.base import enabled_metrics
from metrics.filters import select_top_fraction


class Scorer:
    def __init__(self, ctx: StageContext, scenario: Any = None):
        self.ctx = ctx
        self.scenario = scenario

    def score_sets(self, sets: dict[str, list[Record]]) -> dict[str, dict[str, dict]]:
        """{set name: {id: scores}} for every set; writes each set's scores.jsonl and metrics."""
        scores = {name: {r["id"]: {"id": r["id"]} for r in recs} for name, recs in sets.items()}
        summaries: dict[str, dict[str, Any]] = {n: {"records": len(r)} for n, r in sets.items()}
        metrics = [
            cls(cfg, self.ctx, self.scenario) for cls, cfg in enabled_metrics(self.ctx.cfg.metrics)
        ]
        try:
            for metric in metrics:
                for name, records in sets.items():
                    rows = metric.score(name, records)
                    for i, values in rows.items():
                        scores[name][i].update(values)
                    summaries[name][metric.name] = metric.summarize(name, records, rows)
                self.ctx.close_models()  # before the next metric's model is loaded
        finally:
            self.ctx.close_models()
        for name in sets:
            write_jsonl_atomic(self.ctx.dir / name / "scores.jsonl", scores[name].values())
            self.ctx.add_metrics(name, "score", summaries[name])
        return scores


def filter_set(
    ctx: StageContext, name: str, records: list[Record], scores: dict[str, dict]
) -> tuple[list[Record], dict[str, Any]]:
    """The kept records of set `name` and the counts; writes selected.jsonl."""
    f = ctx.cfg.filter
    kept, counts = select_top_fraction(
        records, scores, f.name, float(f.keep_ratio), ctx.seed, bool(f.drop_ifd_above_1)
    )
    counts["set"] = name
    write_jsonl_atomic(ctx.dir / "selected.jsonl", kept)
    return kept, counts
