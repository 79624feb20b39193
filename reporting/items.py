"""Per-item values behind a job's headline numbers, read back from its run directory.

- Benchmarks: `eval/samples_<task>.jsonl` (lm-eval's logged samples), the rows of each headline's
  filter, keyed `<task>:<doc_id>` — a list-valued metric (IFEval's instruction level) counts as
  (followed, instructions) so the pooled ratio is lm-eval's own number.
- Data metrics: `<set>/scores.jsonl`, the field of every registered stat that is a mean over
  records (`Stat.of`), keyed by record id.
- The pairwise judge: `eval/pairwise.jsonl`, a win as 1 and a tie or loss as 0 over the items the
  judge's verdicts could be read for (the win rate's own denominator).
- Stages: `<stage>/items.jsonl` (rows with an `id`), the field of every registered stage stat that
  is a mean over items (`Stat.of`), keyed `<stage>/<stat>` by item id (unpaired, as data metrics).

Which benchmarks, metrics and stages there are is what the job itself ran with: its registries are
rebuilt from its saved config first (reporting.jobs.job_registries).

`job_items` gives {summary key: (kind, {item: (num, den)})}; `intervals` the `<key>_ci_low` /
`<key>_ci_high` pairs that summary.json carries beside each number.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from core.records import read_jsonl
from core.stage import STAGES
from evaluation.benchmarks import BenchmarkRegistry
from metrics.base import mean_stats
from reporting import stats
from reporting.jobs import job_registries

log = logging.getLogger(__name__)

Items = dict[str, tuple[float, float]]  # item key -> (num, den)

# A key's kind: benchmark items are the same across jobs (paired tests), a set's records are not.
PAIRED, UNPAIRED = "paired", "unpaired"


def benchmark_items(job_dir: Path, benchmarks: BenchmarkRegistry | None = None) -> dict[str, Items]:
    """`<benchmark>/<headline>` of every logged task; `benchmarks`: the job's registry (default:
    rebuilt from its saved config)."""
    if benchmarks is None:
        benchmarks = job_registries(job_dir)
    out: dict[str, Items] = {}
    eval_dir = Path(job_dir) / "eval"
    files = sorted(eval_dir.glob("samples_*.jsonl")) if eval_dir.is_dir() else []
    for path in files:
        task = path.stem.removeprefix("samples_")
        bench = benchmarks.for_task(task)
        if bench is None:
            continue
        rows = list(read_jsonl(path))
        for key, spec in bench.headlines.items():
            metric, _, filt = spec.partition(",")
            items = out.setdefault(f"{bench.name}/{key}", {})
            for row in rows:
                if (filt and row.get("filter") != filt) or metric not in row:
                    continue
                value = _num_den(row[metric])
                if value is not None:
                    items[f"{task}:{row.get('doc_id')}"] = value
    return {k: v for k, v in out.items() if v}


def _num_den(value: Any) -> tuple[float, float] | None:
    if isinstance(value, bool | int | float):
        return (float(value), 1.0) if math.isfinite(value) else None
    if isinstance(value, list) and value and all(isinstance(v, bool | int | float) for v in value):
        total = float(sum(value))
        return (total, float(len(value))) if math.isfinite(total) else None
    return None


def data_items(job_dir: Path) -> dict[str, Items]:
    """`<set>/score/<metric>/<stat>` for every scored set, and `selected/score/...` over the
    records the filter kept (their scores from the set they came from)."""
    out: dict[str, Items] = {}
    by_id: dict[str, dict] = {}
    for path in sorted(Path(job_dir).glob("*/scores.jsonl")):
        rows = list(read_jsonl(path))
        by_id.update((str(r["id"]), r) for r in rows)
        out.update(_stat_items(path.parent.name, rows))
    selected = Path(job_dir) / "selected.jsonl"
    if selected.is_file() and by_id:
        rows = [by_id[i] for r in read_jsonl(selected) if (i := str(r.get("id"))) in by_id]
        out.update(_stat_items("selected", rows))
    return out


def _stat_items(set_name: str, rows: list[dict]) -> dict[str, Items]:
    out: dict[str, Items] = {}
    for metric, stat in mean_stats():
        if items := _field_items(stat, rows):
            out[f"{set_name}/score/{metric}/{stat.key}"] = items
    return out


def _field_items(stat: Any, rows: list[dict]) -> Items:
    """{row id: (value, 1)} of `stat.of` over `rows` (`stat.value` applied; non-numbers skipped)."""
    items: Items = {}
    for row in rows:
        if "id" not in row:
            continue
        raw = row.get(stat.of)
        value = stat.value(raw) if stat.value else raw
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            items[str(row["id"])] = (float(value), 1.0)
    return items


STAGE_ITEMS = "items.jsonl"


def stage_items(job_dir: Path) -> dict[str, Items]:
    """`<stage>/<stat>` for every registered stage stat that is a mean over items (`Stat.of`),
    from the stage's `<job>/<stage>/items.jsonl`."""
    out: dict[str, Items] = {}
    for stage in STAGES:
        means = [s for s in stage.stats if s.of]
        path = Path(job_dir) / stage.name / STAGE_ITEMS
        if not means or not path.is_file():
            continue
        rows = list(read_jsonl(path))
        for stat in means:
            if items := _field_items(stat, rows):
                out[f"{stage.name}/{stat.key}"] = items
    return out


def selected_means(items: dict[str, tuple[str, Items]]) -> dict[str, float]:
    """summary.json's `selected/score/<metric>/<stat>` from a job's items (`job_items`): the
    data metrics of what the filter kept."""
    return {
        key: round(sample_of(values).value, 4)
        for key, (_, values) in items.items()
        if key.startswith("selected/")
    }


def judge_items(job_dir: Path) -> dict[str, Items]:
    path = Path(job_dir) / "eval" / "pairwise.jsonl"
    if not path.is_file():
        return {}
    items = {
        str(row["id"]): (1.0 if row["outcome"] == "win" else 0.0, 1.0)
        for row in read_jsonl(path)
        if row.get("outcome") in ("win", "tie", "lose")
    }
    return {"judge/win_rate": items} if items else {}


def job_items(
    job_dir: Path, benchmarks: BenchmarkRegistry | None = None
) -> dict[str, tuple[str, Items]]:
    """{summary key: (PAIRED | UNPAIRED, items)} of one job, read with the registries it ran
    with (`benchmarks`: its benchmark registry where the caller has it; rebuilt from its saved
    config otherwise, which also imports its metrics' and stages' modules)."""
    if benchmarks is None:
        benchmarks = job_registries(job_dir)
    out: dict[str, tuple[str, Items]] = {}
    for key, items in {**benchmark_items(job_dir, benchmarks), **judge_items(job_dir)}.items():
        out[key] = (PAIRED, items)
    for key, items in {**data_items(job_dir), **stage_items(job_dir)}.items():
        out[key] = (UNPAIRED, items)
    return out


def sample_of(items: Items) -> stats.Sample:
    keys = sorted(items)
    return stats.Sample.of([items[k][0] for k in keys], [items[k][1] for k in keys])


def intervals(
    job_dir: Path,
    summary: dict | None = None,
    seed: int = 0,
    items: dict[str, tuple[str, Items]] | None = None,
) -> dict[str, Any]:
    """`<key>_ci_low` / `<key>_ci_high` (95%) for every number with per-item data: a bootstrap
    over items, the Wilson interval for the judge's win rate. A number whose items do not give
    the summary's value back (files from another run) gets no interval, with a warning; with a
    summary, only its keys get one."""
    out: dict[str, Any] = {}
    for key, (_, values) in (items if items is not None else job_items(job_dir)).items():
        if summary is not None and key not in summary:
            continue  # a file left by an earlier run of other stages
        sample = sample_of(values)
        if key == "judge/win_rate":
            ci = stats.wilson(int(sample.num.sum()), sample.items)
        else:
            ci = stats.interval(sample, seed=seed)
        if summary is not None and isinstance(summary.get(key), int | float):
            if abs(float(summary[key]) - ci.value) > 1e-3 * max(1.0, abs(ci.value)):
                log.warning(
                    "%s: %s in summary.json but %s from its per-item files; no interval",
                    key,
                    summary[key],
                    ci.value,
                )
                continue
        out[f"{key}_ci_low"] = round(ci.low, 6)
        out[f"{key}_ci_high"] = round(ci.high, 6)
    return out
