"""The metric contract and its registry: everything the framework knows about a metric, in one
place beside its code.

A metric declares its settings (`Config`, read from `metrics.<name>`), its per-record `fields`
(columns of `scores.jsonl`: direction, the filter that selects by it, its plot) and its set-level
`stats` (metrics.json › score › <name>, summary.json `round_<r>/score/<name>/<key>`: direction,
headline, plots), which settings belong to its cache key, and `score` / `summarize`. The scorer,
the filters, the summary, the comparison, W&B and the plots iterate `METRICS`; none of them names a
metric. To add one: a module with a `Metric` subclass registered by `@METRICS.register()`, and
`conf/metrics/<name>.yaml` holding `<name>: {enabled: true, impl: package.module, ...}`, selected by
`metrics=[...,<name>]` (or in an experiment's defaults).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from core.context import StageContext
from core.fields import Field, Stat  # noqa: F401  (re-exported: a metric declares them)
from core.records import Record
from core.registry import Registry


@dataclass
class MetricConfig:
    """Every metric's settings extend this."""

    enabled: bool = True
    impl: str | None = None  # "package.module": imported to register a metric that is not built in


class Metric:
    """Base class: `score` and `summarize` are called once per set, metric by metric, in `order`
    (generation-based metrics first while the engine is up, then embedders, then forward-pass
    models), so each model loads once per stage."""

    name: ClassVar[str]
    Config: ClassVar[type[MetricConfig]] = MetricConfig
    fields: ClassVar[tuple[Field, ...]] = ()
    stats: ClassVar[tuple[Stat, ...]] = ()
    order: ClassVar[int] = 50
    # The setting that names a role model (null | conf/model name | mapping), if any: its weights
    # and dtype are checked at start-up like every other role's.
    role_field: ClassVar[str | None] = None
    # It generates with the run's own model, the evolver (the confidence metric): the score
    # stage then loads the evolver too (its resources, for a launcher's sizing).
    uses_evolver: ClassVar[bool] = False
    # The setting that picks its own forward-pass model's format (`auto` resolved from the
    # hardware), reported as summary.json `hardware/<name>_dtype`.
    dtype_field: ClassVar[str | None] = None
    # Settings that do not change a score (explicit, as distilabel's signature exclusions): the
    # rest of `Config` goes into the cache key of every cached result.
    key_excludes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Any, ctx: StageContext, scenario: Any = None):
        self.cfg = cfg  # an instance of `Config`
        self.ctx = ctx
        self.scenario = scenario

    @classmethod
    def dtype_setting(cls, cfg: Any, run_cfg: Any) -> tuple[Any, str] | None:
        """(value, config key) of the format its own forward-pass model runs in, for summary.json
        `hardware/<name>_dtype`: by default its `dtype_field`; None where it runs no model of its
        own (or one whose format another setting decides: override this)."""
        if not cls.dtype_field:
            return None
        return getattr(cfg, cls.dtype_field), f"metrics.{cls.name}.{cls.dtype_field}"

    def engine_model(self) -> Any | None:
        """The model config it generates with through the job's engine pool, if any (the score
        stage runs the metrics of one engine together, so no model is loaded twice)."""
        return None

    def cache_key(self) -> dict[str, Any]:
        skip = {"enabled", "impl", *self.key_excludes}
        return {k: v for k, v in dataclasses.asdict(self.cfg).items() if k not in skip}

    def score(self, set_name: str, records: list[Record]) -> dict[str, dict[str, Any]]:
        """{record id: {field: value}} for the records it can score (others get nothing)."""
        raise NotImplementedError

    def evolution_prompts(self, records: list[Record]) -> dict[str, Any]:
        """{id: the prompt that produced the record} for evolved records whose scenario can
        rebuild it (seeds and records not made by a prompt are left out)."""
        prompt = getattr(self.scenario, "evolution_prompt", None)
        out = {}
        for r in records:
            meta = r.get("meta", {})
            if prompt and "method" in meta and "parent_instruction" in meta:
                if (p := prompt(r)) is not None:
                    out[r["id"]] = p
        return out

    def summarize(
        self, set_name: str, records: list[Record], rows: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """The set-level numbers; by default the mean of every numeric field (`<field>_mean`)."""
        out: dict[str, Any] = {}
        for f in self.fields:
            vals = [r.get(f.name) for r in rows.values()]
            out[f"{f.name}_mean"] = mean(vals)
        return out


def mean(values: list) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return sum(vals) / len(vals) if vals else None


METRICS: Registry[type[Metric]] = Registry(
    "metric",
    builtins=(
        "metrics.judge",
        "metrics.confidence",
        "metrics.diversity",
        "metrics.ifd",
        "metrics.reward",
    ),
)


def enabled_metrics(metrics_cfg: Any) -> list[tuple[type[Metric], Any]]:
    """(class, typed config) of every configured and enabled metric, in run order; a configured
    name that is not registered is an error listing the registered ones. A metric is configured
    when its file in conf/metrics/ is selected (`metrics=[...]`); every such file says `enabled`.
    A section without it holds only a preset's settings for a metric the run did not select
    (the demo's diversity model and judge caps under `metrics=[ifd]`), so it is skipped."""
    from core.config import typed_section

    out = []
    for name in metrics_cfg or {}:
        node = metrics_cfg[name]
        if node is None or "enabled" not in node:
            continue
        cls = METRICS.get(str(name), node.get("impl") if node is not None else None)
        cfg = typed_section(cls.Config, node, f"metrics.{name}")
        if cfg.enabled:
            out.append((cls, cfg))
    return sorted(out, key=lambda m: m[0].order)


def filters() -> dict[str, tuple[str | None, bool]]:
    """filter name -> (score field, descending) from every registered metric, plus `random` and
    `none`."""
    out: dict[str, tuple[str | None, bool]] = {}
    for m in METRICS:
        for f in m.fields:
            if f.filter:
                out[f.filter] = (f.name, f.descending)
    return {**out, "random": (None, False), "none": (None, False)}


def needs_scores(filter_name: str) -> bool:
    return filters().get(filter_name, (None, False))[0] is not None


def stat_for(key: str) -> Stat | None:
    """The Stat behind a summary key `[<set>/]score/<metric>/<key>`, if any."""
    parts = key.split("/")
    if "score" not in parts or len(parts) < parts.index("score") + 3:
        return None
    i = parts.index("score")
    name, rest = parts[i + 1], "/".join(parts[i + 2 :])
    if name not in METRICS:
        return None
    stats = METRICS.get(name).stats
    exact = next((s for s in stats if rest == s.key), None)
    return exact or next((s for s in stats if s.labels and rest.startswith(f"{s.key}/")), None)


def mean_stats() -> list[tuple[str, Stat]]:
    """(metric name, stat) of every registered stat that is a mean over per-record values."""
    return [(m.name, s) for m in METRICS for s in m.stats if s.of]


def sample_fields() -> list[str]:
    return [f.name for m in METRICS for f in m.fields if f.sample]
