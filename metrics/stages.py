"""The `score`, `filter` and `equal_size` stages over the metric registry (`metrics.base.METRICS`).

Score: every enabled metric, metric by metric over all sets, so each model loads once per stage:
the generation-based metrics grouped by the engine they use, the loaded one first (`by_engine`),
then the embedder and the forward-pass models in their `order`; per record into
`<set>/scores.jsonl`, set summaries into metrics.json.
Filter: `filter.keep_ratio` of one set by a registered field (`ranked`). Equal size (with filter,
when `filter.equal_size` is set): a seeded sample of exactly N of them, or the smallest arm's
count. Whichever runs last writes `selected.jsonl`, once.
"""

from __future__ import annotations

import logging
from typing import Any

from core.context import one_line
from core.errors import ConfigError, DataError, unknown_option
from core.records import Record, subsample, write_jsonl_atomic
from core.schemas import FilterConfig
from core.stage import STAGES, Resources, Stage, StageResult
from metrics.base import enabled_metrics, needs_scores
from metrics.filters import select_top_fraction

log = logging.getLogger(__name__)


class Scorer:
    def __init__(self, ctx: Any, scenario: Any = None):
        self.ctx = ctx
        self.scenario = scenario

    def score_sets(self, sets: dict[str, list[Record]]) -> dict[str, dict[str, dict]]:
        """{set name: {id: scores}} for every set; writes each set's scores.jsonl and metrics."""
        scores = {name: {r["id"]: {"id": r["id"]} for r in recs} for name, recs in sets.items()}
        summaries: dict[str, dict[str, Any]] = {n: {"records": len(r)} for n, r in sets.items()}
        metrics = by_engine(
            [
                cls(cfg, self.ctx, self.scenario)
                for cls, cfg in enabled_metrics(self.ctx.cfg.metrics)
            ],
            self.ctx.engines,
        )
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


def by_engine(metrics: list[Any], pool: Any) -> list[Any]:
    """The metrics in the order they run: those that generate through the engine pool first,
    grouped by the engine they need (the one loaded now, e.g. the responder's, first), then the
    rest in their `order`. Before, a judge between two uses of the evolver (the confidence
    metric) unloaded it, and it was loaded again."""
    loaded = pool.loaded_key() if pool is not None else None
    groups: dict[str | None, list[Any]] = {}
    for m in metrics:
        model = m.engine_model()
        groups.setdefault(pool.engine_key(model) if model is not None else None, []).append(m)
    keys = [k for k in groups if k is not None]
    keys.sort(key=lambda k: (k != loaded, min(m.order for m in groups[k])))
    return [m for k in keys for m in groups[k]] + groups.get(None, [])


@STAGES.register()
class Score(Stage):
    name = "score"
    order = 30
    section = "metrics"
    needs = ("sets",)
    produces = ("scores",)

    def resources(self) -> Resources:
        enabled = [m for m, _ in enabled_metrics(self.run_cfg.metrics)]
        roles = [f"metrics.{m.name}.{m.role_field}" for m in enabled if m.role_field]
        if any(m.uses_evolver for m in enabled):
            roles.insert(0, "model")
        return Resources(models=tuple(roles))

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        sets = {name: ctx.usable(records) for name, records in inputs["sets"].items()}
        return StageResult(artifacts={"scores": Scorer(ctx, ctx.scenario).score_sets(sets)})


@STAGES.register()
class Filter(Stage):
    """`filter.keep_ratio` of one set (`filter.round`, default the last), best first by the
    filter's field: the `ranked` records; `selected.jsonl` unless an equal-size cut follows."""

    name = "filter"
    order = 40
    Config = FilterConfig
    needs = ("sets", "scores")
    produces = ("ranked", "selected", "filter_counts")

    def __init__(self, cfg: Any, run_cfg: Any):
        super().__init__(cfg, run_cfg)
        if not needs_scores(cfg.name):  # filter=random / none select without scores
            self.needs = ("sets",)

    def check(self, stages: list[str]) -> None:
        if "scores" in self.needs and "score" not in stages:
            raise ConfigError(
                f"filter={self.cfg.name} needs scores: add score to stages "
                "(cached scores cost nothing), or use filter=random / filter=none"
            )

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        f, sets = self.cfg, inputs.get("sets") or {}
        if not sets:
            raise DataError("filter: no set to select from (every evolution failed)")
        name = f"round_{f.round}" if f.round is not None else list(sets)[-1]
        if name not in sets:
            raise unknown_option("filter.round set", name, list(sets))
        records = ctx.usable(sets[name])
        if not records:  # nothing survived upstream (counted there)
            log.warning("filter: %s has no record to select from; nothing selected", name)
            (ctx.dir / "selected.jsonl").unlink(missing_ok=True)  # no file as if it succeeded
            counts: dict[str, Any] = {"filter": f.name, "set": name, "input": 0, "kept": 0}
            return _result([], counts, ranked=True)
        scores = (inputs.get("scores") or {}).get(name, {})
        kept, counts = select_top_fraction(
            records, scores, f.name, f.keep_ratio, ctx.seed, f.drop_ifd_above_1
        )
        counts["set"] = name
        if f.equal_size is None:
            write_jsonl_atomic(ctx.dir / "selected.jsonl", kept)
            log.info("filter: %s", one_line(counts))
        return _result(kept, counts, ranked=True)


@STAGES.register()
class EqualSize(Stage):
    """A seeded sample of exactly `filter.equal_size` records (or the smallest arm's count), in
    ranking order; the sizes go to summary.json › filter/..."""

    name = "equal_size"
    order = 45
    part_of = "filter"
    section = "filter"
    Config = FilterConfig
    needs = ("ranked", "filter_counts")
    produces = ("selected",)

    def active(self, inputs: dict[str, Any]) -> bool:
        return self.cfg.equal_size is not None and "ranked" in inputs

    def arm_needs(self) -> tuple[str, ...]:
        return ("ranked",) if self.cfg.equal_size == "smallest" else ()

    def run(self, ctx: Any, inputs: dict[str, Any]) -> StageResult:
        kept = inputs["ranked"]
        counts = dict(inputs.get("filter_counts") or {})
        size = self.cfg.equal_size
        if size == "smallest":
            sizes = ctx.arm_sizes("ranked", len(kept), "filter.equal_size")
            counts["arm_sizes"] = sizes
            size = min(sizes.values())
        size = int(size)
        if size > len(kept):
            raise DataError(
                f"filter.equal_size={size} but this job selects only {len(kept)} records; lower "
                "equal_size (or use equal_size=smallest in a sweep), or evolve more"
            )
        counts.update(before_equal_size=len(kept), equal_size=size, kept=size)
        selected = subsample(kept, size, ctx.seed)
        write_jsonl_atomic(ctx.dir / "selected.jsonl", selected)
        log.info("filter: %s", one_line(counts))
        return _result(selected, counts)


def _result(kept: list[Record], counts: dict, ranked: bool = False) -> StageResult:
    artifacts: dict[str, Any] = {"selected": kept, "filter_counts": counts}
    if ranked:
        artifacts["ranked"] = kept
    return StageResult(artifacts=artifacts, summary={f"filter/{k}": v for k, v in counts.items()})
