"""Two arms of a study compared the way a reviewer would: per metric, both arms' values with 95%
CIs, the difference with its CI, a p-value corrected across the table's metrics, and the answer in
words. Also the rule `comparison.md` bolds by: a value is bold only when it is significantly best.

An arm is the jobs whose overrides include the arm's (`model=llama3.1_8b`, or several separated by
spaces); its seeds are the jobs that differ only by `seed`. Jobs of both arms that agree on every
other override form one context (e.g. each `filter` of a model × filter sweep), compared on their
own.

Benchmarks and the judge's win rate are paired (the same items in both arms); data metrics
(complexity, difficulty, IFD, IC-IFD, diversity, confidence, reward) are not (each arm scores its
own evolved records), so they get an unpaired test. A stage's stat (core.stage, `<stage>/<key>`)
is tested on its per-item file where it writes one (reporting.items), else over the arms' seeds
(each job's number one value, unpaired) when both arms have at least two. See reporting.stats for
the methods.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.records import write_text_atomic
from core.stage import stat_for_stage
from evaluation.benchmarks import BenchmarkRegistry
from reporting import stats
from reporting.items import PAIRED, job_items
from reporting.jobs import comparison_registry, find_jobs, load_job
from reporting.plots import forest
from reporting.summary import direction

log = logging.getLogger(__name__)

ALPHA = 0.05
SEED_KEY = "seed"


def parse_arm(spec: str) -> dict[str, str]:
    """`"model=a filter=ifd"` -> {"model": "a", "filter": "ifd"}."""
    out = {}
    for part in str(spec).split():
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise ConfigError(f"arm {spec!r}: expected key=value overrides separated by spaces")
        out[key.lstrip("+~")] = value
    if not out:
        raise ConfigError("an arm needs at least one key=value override")
    return out


def context_of(job: dict, skip: set[str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in job["overrides"].items() if k not in skip))


def items_of(job: dict) -> dict[str, tuple[str, dict]]:
    """The job's per-item data (reporting.items), read once, with its own benchmark registry."""
    if "items" not in job:
        job["items"] = job_items(Path(job["dir"]), job.get("benchmarks"))
    return job["items"]


def _sample(jobs: list[dict], key: str, kind: str, common: list[str] | None) -> stats.Sample:
    """The arm's Sample of `key`: items × seeds (paired, on `common`), or pooled records."""
    import numpy as np

    per_job = [items_of(j)[key][1] for j in jobs]
    if kind == PAIRED:
        num = np.array([[it[i][0] for it in per_job] for i in common])
        den = np.array([[it[i][1] for it in per_job] for i in common])
        return stats.Sample.of(num, den)
    values = [v for it in per_job for v in it.values()]
    return stats.Sample.of([v[0] for v in values], [v[1] for v in values])


def _common(jobs: list[dict], key: str) -> list[str]:
    sets = [set(items_of(j)[key][1]) for j in jobs]
    return sorted(set.intersection(*sets)) if sets else []


def seed_values(jobs: list[dict], key: str) -> list[float] | None:
    """Each job's own number for `key` (a job-level stage stat, `<stage>/<key>`, that is a
    headline or has a direction), or None when a job lacks it or it is not one."""
    found = stat_for_stage(key)
    if found is None or (found[1].higher_is_better is None and not found[1].headline):
        return None
    values = [j["summary"].get(key) for j in jobs]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return None
    return [float(v) for v in values]


def _over_seeds(a: list[dict], b: list[dict], key: str) -> stats.Difference | None:
    """A stage stat without per-item data: each arm's seeds (jobs) are its values, unpaired;
    None unless both arms have at least two."""
    va, vb = seed_values(a, key), seed_values(b, key)
    if va is None or vb is None or len(va) < 2 or len(vb) < 2:
        return None
    d = stats.unpaired(stats.Sample.of(va), stats.Sample.of(vb))
    return dataclasses.replace(d, test=f"{d.test} over seeds")


def compare_jobs(a: list[dict], b: list[dict], key: str) -> stats.Difference | None:
    """Arm A's jobs (its seeds) vs arm B's on summary key `key`; None without per-item data (a
    stage stat without it: over the arms' seeds, when each has two or more)."""
    if not all(key in items_of(j) for j in (*a, *b)):
        return _over_seeds(a, b, key)
    kind = items_of(a[0])[key][0]
    if kind == PAIRED:
        common = _common([*a, *b], key)
        if not common:
            return None
        return stats.paired(_sample(a, key, kind, common), _sample(b, key, kind, common))
    return stats.unpaired(_sample(a, key, kind, None), _sample(b, key, kind, None))


def arm_interval(jobs: list[dict], key: str) -> stats.Interval | None:
    if not all(key in items_of(j) for j in jobs):
        return None
    kind = items_of(jobs[0])[key][0]
    common = _common(jobs, key) if kind == PAIRED else None
    if common is not None and not common:
        return None
    return stats.interval(_sample(jobs, key, kind, common))


def significant_best(
    groups: list[list[dict]],
    key: str,
    values: list[Any],
    benchmarks: BenchmarkRegistry | None = None,
) -> int | None:
    """The index of the group whose value of `key` is best and significantly better than every
    other group's (p < 0.05, Holm-corrected over those comparisons); None otherwise."""
    higher = direction(key, benchmarks)
    nums = [(i, v) for i, v in enumerate(values) if isinstance(v, int | float)]
    if higher is None or len(nums) < 2 or len({v for _, v in nums}) < 2:
        return None
    best = (max if higher else min)(nums, key=lambda t: t[1])[0]
    pvalues = []
    for i, _ in nums:
        if i == best:
            continue
        d = compare_jobs(groups[best], groups[i], key)
        if d is None or (d.diff.value > 0) != higher:  # the items must agree with the means
            return None
        pvalues.append(d.p)
    return best if all(p < ALPHA for p in stats.holm(pvalues)) else None


@dataclass
class Row:
    context: str
    metric: str
    a: stats.Interval
    b: stats.Interval
    diff: stats.Interval
    p: float
    p_holm: float
    test: str
    items: int
    seeds_a: int
    seeds_b: int
    verdict: str


def words(diff: float, p_holm: float, higher: bool | None) -> str:
    if p_holm >= ALPHA:
        return "no detectable difference at 95%"
    if higher is None:
        return "A higher" if diff > 0 else "B higher"
    return "A better" if (diff > 0) == higher else "B better"


def verdict_rows(
    jobs: list[dict], arm_a: str, arm_b: str, benchmarks: BenchmarkRegistry | None = None
) -> list[Row]:
    """Arm A vs arm B on every number both have per-item data for, per context. `benchmarks`:
    the registry of the jobs (default: rebuilt from their saved configs, reporting.jobs)."""
    if benchmarks is None:
        benchmarks = comparison_registry(jobs)
    a_spec, b_spec = parse_arm(arm_a), parse_arm(arm_b)
    skip = {SEED_KEY, *a_spec, *b_spec}

    def members(spec: dict[str, str], name: str) -> list[dict]:
        found = [j for j in jobs if all(j["overrides"].get(k) == v for k, v in spec.items())]
        if not found:
            seen = sorted({f"{k}={v}" for j in jobs for k, v in j["overrides"].items()})
            raise ConfigError(
                f"arm {name} ({' '.join(f'{k}={v}' for k, v in spec.items())}) matches no job; "
                f"the jobs' overrides: {', '.join(seen) or 'none'}"
            )
        return found

    in_a, in_b = members(a_spec, "A"), members(b_spec, "B")
    # Overrides every job shares (data.limit=4 on the whole sweep) are no context.
    everything = {k for j in jobs for k in j["overrides"]}
    skip |= {k for k in everything if len({j["overrides"].get(k) for j in in_a + in_b}) == 1}
    shared = [j for j in in_a if j in in_b]
    if shared:
        raise ConfigError(f"arms A and B both match {shared[0]['dir']}: name arms that differ")
    contexts: dict[tuple, tuple[list, list]] = {}
    for j in in_a:
        contexts.setdefault(context_of(j, skip), ([], []))[0].append(j)
    for j in in_b:
        contexts.setdefault(context_of(j, skip), ([], []))[1].append(j)
    rows: list[Row] = []
    for ctx, (a, b) in contexts.items():
        if not a or not b:
            log.warning("verdict: context %s has jobs of one arm only; skipped", dict(ctx))
            continue
        label = " ".join(f"{k}={v}" for k, v in ctx)
        keys = [k for k in items_of(a[0]) if all(k in items_of(j) for j in (*a, *b))]
        keys += [k for k in a[0]["summary"] if k not in keys and seed_values([*a, *b], k)]
        found = []
        for key in keys:
            d = compare_jobs(a, b, key)
            if d is not None:
                found.append((key, d))
        adjusted = stats.holm([d.p for _, d in found])
        for (key, d), p_holm in zip(found, adjusted):
            rows.append(
                Row(
                    context=label,
                    metric=key,
                    a=d.a,
                    b=d.b,
                    diff=d.diff,
                    p=d.p,
                    p_holm=p_holm,
                    test=d.test,
                    items=d.items,
                    seeds_a=len(a),
                    seeds_b=len(b),
                    verdict=words(d.diff.value, p_holm, direction(key, benchmarks)),
                )
            )
    if not rows:
        raise ConfigError(
            "verdict: the arms share no metric with per-item data (run the evaluate and score "
            "stages; their per-item files are eval/samples_*.jsonl and <set>/scores.jsonl)"
        )
    return rows


def _ci(i: stats.Interval) -> str:
    return f"{i.value:.4g} [{i.low:.4g}, {i.high:.4g}]"


def _p(p: float) -> str:
    return f"{p:.3g}" if p >= 1e-4 else "<1e-4"


def write_verdict(
    rows: list[Row],
    arm_a: str,
    arm_b: str,
    out: Path,
    benchmarks: BenchmarkRegistry | None = None,
) -> dict[str, Path]:
    """verdict.md, verdict.csv and the forest plot under `out`."""
    out = Path(out)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(
        [
            "context",
            "metric",
            "a",
            "a_ci_low",
            "a_ci_high",
            "b",
            "b_ci_low",
            "b_ci_high",
            "diff",
            "diff_ci_low",
            "diff_ci_high",
            "p",
            "p_holm",
            "test",
            "items",
            "seeds_a",
            "seeds_b",
            "verdict",
        ]
    )
    for r in rows:
        w.writerow(
            [
                r.context,
                r.metric,
                *(round(x, 6) for x in (r.a.value, r.a.low, r.a.high)),
                *(round(x, 6) for x in (r.b.value, r.b.low, r.b.high)),
                *(round(x, 6) for x in (r.diff.value, r.diff.low, r.diff.high)),
                r.p,
                r.p_holm,
                r.test,
                r.items,
                r.seeds_a,
                r.seeds_b,
                r.verdict,
            ]
        )
    write_text_atomic(out / "verdict.csv", buf.getvalue())
    figure = forest(rows, arm_a, arm_b, out / "plots" / "forest_verdict.png", benchmarks)
    write_text_atomic(out / "verdict.md", verdict_markdown(rows, arm_a, arm_b, figure))
    return {"md": out / "verdict.md", "csv": out / "verdict.csv", "plot": figure}


def verdict_markdown(rows: list[Row], arm_a: str, arm_b: str, figure: Path | None) -> str:
    lines = [
        "# Verdict",
        "",
        f"A: `{arm_a}` · B: `{arm_b}`",
        "",
    ]
    contexts = list(dict.fromkeys(r.context for r in rows))
    for ctx in contexts:
        part = [r for r in rows if r.context == ctx]
        if len(contexts) > 1 or ctx:
            lines += [f"## {ctx or '(all jobs)'}", ""]
        lines += [
            f"Seeds: A {part[0].seeds_a}, B {part[0].seeds_b}. p (Holm): corrected over the "
            f"{len(part)} metrics below.",
            "",
            "| metric | A [95% CI] | B [95% CI] | A − B [95% CI] | p | p (Holm) | test | verdict |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in part:
            lines.append(
                f"| {r.metric} | {_ci(r.a)} | {_ci(r.b)} | {_ci(r.diff)} | {_p(r.p)} | "
                f"{_p(r.p_holm)} | {r.test} | {r.verdict} |"
            )
        lines.append("")
    lines += [
        "How to read it: each interval is a 95% bootstrap CI (benchmark items, and seeds when an "
        "arm has several, resampled). Benchmarks and win rates are paired on the same items "
        "(one seed: McNemar's exact test for pass/fail, else a sign-flip permutation test; several "
        "seeds: the two-way bootstrap's p-value); data "
        "metrics compare each arm's own records (a permutation test; Welch's t-test above 20,000 "
        "records); a stage's number without per-item data compares the arms' seeds (each job's "
        "number one value, a permutation test). A row names a better arm "
        "only when its Holm-corrected p is below 0.05; otherwise the data cannot tell the arms "
        "apart, whatever the means say.",
        "",
    ]
    if figure is not None:
        lines += [f"![differences](plots/{figure.name})", ""]
    return "\n".join(lines)


def verdict(
    paths: list[str | Path], arm_a: str, arm_b: str, out_dir: str | Path | None = None
) -> list[Row]:
    """Load the jobs under `paths`, compare arm A with arm B, write the files."""
    job_dirs = find_jobs(paths)
    if not job_dirs:
        raise ConfigError(f"no job with a summary.json under {', '.join(map(str, paths))}")
    jobs = [load_job(p) for p in job_dirs]
    jobs = [j for j in jobs if j["summary"].get("status") == "ok"]
    benchmarks = comparison_registry(jobs)
    rows = verdict_rows(jobs, arm_a, arm_b, benchmarks)
    out = Path(out_dir or (Path(paths[0]) if len(paths) == 1 else Path.cwd()))
    write_verdict(rows, arm_a, arm_b, out, benchmarks)
    return rows
