"""summary.json: one flat dict of every headline number of a job, and its printed form.

Which numbers are headlines, and which way each is better, comes from the registries: a metric's
`Stat`s (metrics.base), a stage's `Stat`s (core.stage, summary keys `<stage>/<key>`), a
benchmark's headlines (evaluation.benchmarks: the job's own registry, reporting.jobs, where a
caller has one); the stage counts below are the runner's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from core.stage import STAGES, stat_for_stage
from engines.precision import Hardware, hardware_summary
from evaluation.benchmarks import BENCHMARKS, BenchmarkRegistry
from metrics.base import METRICS, enabled_metrics, stat_for
from reporting.jobs import job_registries

# The runner's per-set counts shown beside the metrics: key tail -> higher is better.
STAGE_HEADLINES: dict[str, bool] = {
    "evolve/parsed": True,
    "evolve/failed": False,
    "evolve/parse_rate": True,
    "evolve/instruction_words_mean": True,
    "respond/responded": True,
    "respond/response_words_mean": True,
}
# Job-level columns: key or prefix -> higher is better (None: a fact, never "best").
JOB_COLUMNS: dict[str, bool | None] = {
    "model/size_b": None,
    "filter/kept": None,
    "train/steps": None,
    "train/final_loss": False,
    "judge/win": True,
    "judge/win_rate": True,
    "judge/tie": None,
    "judge/lose": False,
    "judge/unparseable": False,
}


def metric_headlines() -> list[str]:
    """`score/<metric>/<stat>` of every registered headline stat."""
    return [f"score/{m.name}/{s.key}" for m in METRICS for s in m.stats if s.headline]


def stage_headlines() -> list[str]:
    """`<stage>/<stat>` of every registered stage's headline stat."""
    return [f"{st.name}/{s.key}" for st in STAGES for s in st.stats if s.headline]


def headline_tails() -> list[str]:
    """Key tails (after `round_<r>/`) of the per-set headline numbers."""
    return [*STAGE_HEADLINES, *metric_headlines()]


def _tail(key: str) -> str:
    return key.split("/", 1)[-1] if key.startswith("round_") else key


def direction(key: str, benchmarks: BenchmarkRegistry | None = None) -> bool | None:
    """True when larger is better for summary key `key`, False when smaller is, None when it is a
    fact, not a score (or unknown). `benchmarks`: the registry the job(s) ran with (default: the
    built-in benchmarks)."""
    benchmarks = benchmarks if benchmarks is not None else BENCHMARKS
    tail = _tail(key)
    if tail in STAGE_HEADLINES:
        return STAGE_HEADLINES[tail]
    if (stat := stat_for(key)) is not None:
        return stat.higher_is_better
    if (found := stat_for_stage(tail)) is not None:
        return found[1].higher_is_better
    if (b := benchmarks.for_headline(key)) is not None:
        return b.higher_is_better(key)
    if key in JOB_COLUMNS:
        return JOB_COLUMNS[key]
    if key.startswith("time/"):
        return False
    return None


def is_headline(key: str, benchmarks: BenchmarkRegistry | None = None) -> bool:
    benchmarks = benchmarks if benchmarks is not None else BENCHMARKS
    tail = _tail(key)
    if tail in headline_tails() or benchmarks.for_headline(key) is not None or key in JOB_COLUMNS:
        return True
    found = stat_for_stage(tail)
    return found is not None and found[1].headline


def hardware_facts(cfg: DictConfig, hw: Hardware | None = None) -> dict[str, Any]:
    """`hardware/*`: the device and the format of every model the job runs (the engine, the
    training precision, and each enabled metric's own forward-pass model, `<metric>_dtype`: the
    format it really runs in, `Metric.dtype_setting`)."""
    stages = set(cfg.get("stages") or ())
    dtypes = {}
    if not stages or "score" in stages:
        for m, mcfg in enabled_metrics(cfg.get("metrics")):
            setting = m.dtype_setting(mcfg, cfg)
            if setting is not None:
                dtypes[f"{m.name}_dtype"] = setting
    return hardware_summary(cfg, hw, dtypes)


def flatten(prefix: str, obj: Any, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        out[prefix] = round(obj, 4) if isinstance(obj, float) else obj


def build_summary(
    cfg: DictConfig, rounds: int, metrics: dict, pool: Any, cache: Any, n_seeds: int
) -> dict:
    s: dict[str, Any] = {
        "status": "ok",
        "model": cfg.model.name,
        "model/size_b": cfg.model.get("size_b"),
        "scenario": cfg.scenario.name,
        "engine": pool.kind,
        "rounds": int(rounds),
        "seeds": n_seeds,
    }
    for name, stages in metrics.items():
        ev = stages.get("evolve")
        if ev and ev.get("attempted"):
            ev = {**ev, "parse_rate": ev["parsed"] / ev["attempted"]}
            stages = {**stages, "evolve": ev}
        flatten(name, stages, s)
    st = pool.stats
    s.update(
        {
            "engine/prompts": st.prompts,
            "engine/failed_requests": st.failed,
            "engine/generated_tokens": st.generated_tokens,
            "engine/seconds": round(st.seconds, 2),
            "engine/tokens_per_s": round(st.generated_tokens / st.seconds, 2)
            if st.seconds
            else None,
            "cache/steps": len(cache.reports),
            "cache/hits": sum(r.status == "cache hit" for r in cache.reports),
            "cache/items_from_cache": sum(r.cached for r in cache.reports),
            "cache/items_computed": sum(r.computed for r in cache.reports),
        }
    )
    return s


def print_summary(
    summary: dict, run_dir: Path, benchmarks: BenchmarkRegistry | None = None
) -> None:
    """The job's headline numbers, printed; `benchmarks`: the registry it ran with (default: the
    one its saved config names, reporting.jobs)."""
    if benchmarks is None:
        benchmarks = job_registries(run_dir)
    tails = headline_tails()
    rows = [(k, v) for k, v in summary.items() if k.split("/", 1)[-1] in tails]
    extra = ("filter/kept", "train/steps", "train/final_loss", *benchmarks.headline_keys())
    extra += (*stage_headlines(), "engine/prompts", "cache/hits")
    rows += [(k, summary[k]) for k in extra if k in summary]
    rows += [(k, v) for k, v in summary.items() if k.startswith(("time/", "hardware/"))]
    width = max(len(k) for k, _ in rows)
    print(f"\n== {summary['model']} · {summary['scenario']} · {summary['rounds']} round(s) ==")
    for k, v in rows:
        print(f"  {k:<{width}}  {round(v, 3) if isinstance(v, float) else v}")
    print(f"  outputs: {run_dir}  (report: {Path(run_dir) / 'report.md'})\n")
