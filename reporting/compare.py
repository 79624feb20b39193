"""Compare jobs side by side: `python -m reporting.compare <multirun dir | run dirs ...>`.

Writes `comparison.md` and `comparison.csv` (a row per job: the swept keys first, then the numbers
of summary.json — the headline ones in Markdown, all of them in CSV) and `report.md` with the
study's plots under `plots/`. Jobs that differ only by `seed` are also shown as one row, mean ± sd
over the seeds. A value is bold only when it is significantly best in its column (tested on the
per-item data, reporting.verdict.significant_best); a column without per-item data is never bold.
With `pair=(A, B)` it also writes the verdict of arm A vs arm B (reporting.verdict). run.py calls
it at the end of every multirun (see CompareCallback; `compare.pair` in the config).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback

from core.errors import ConfigError, UserFacingError
from core.records import write_text_atomic
from evaluation.benchmarks import BenchmarkRegistry
from reporting import plots
from reporting.jobs import (  # noqa: F401  (find_jobs, load_job, sweep_failures: used from here)
    comparison_registry,
    find_jobs,
    load_job,
    record_invocation,
    run_record,
    sweep_failures,
    write_sweep_outcome,
)
from reporting.summary import is_headline
from reporting.verdict import (
    SEED_KEY,
    context_of,
    significant_best,
    verdict_rows,
    write_verdict,
)

log = logging.getLogger(__name__)


def headline_keys(jobs: list[dict], benchmarks: BenchmarkRegistry | None = None) -> list[str]:
    """The summary keys shown in comparison.md: every numeric headline of any job (metric and
    stage stats, benchmarks, job columns), in first-seen order."""
    keys: list[str] = []
    for job in jobs:
        for k, v in job["summary"].items():
            if k in keys or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if is_headline(k, benchmarks):
                keys.append(k)
    return keys


def numeric_keys(jobs: list[dict]) -> list[str]:
    keys: list[str] = []
    for job in jobs:
        for k, v in job["summary"].items():
            if k not in keys and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    return keys


def swept_keys(jobs: list[dict]) -> list[str]:
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job["overrides"] if k not in keys]
    varying = [k for k in keys if len({job["overrides"].get(k) for job in jobs}) > 1]
    return varying or keys


def seed_groups(jobs: list[dict]) -> list[list[dict]]:
    """Jobs that set `seed` and differ only by it, together, in first-seen order; any other job
    (no seed override: nothing says it is a seed of another) on its own."""
    groups: dict[tuple, list[dict]] = {}
    for n, job in enumerate(jobs):
        key = context_of(job, {SEED_KEY}) if SEED_KEY in job["overrides"] else ("job", n)
        groups.setdefault(key, []).append(job)
    return list(groups.values())


def group_value(group: list[dict], key: str) -> tuple[float | None, float | None]:
    """Mean and sample sd over the group's jobs (sd None for one job)."""
    vals = [
        float(j["summary"][key])
        for j in group
        if isinstance(j["summary"].get(key), int | float)
        and not isinstance(j["summary"].get(key), bool)
    ]
    if not vals:
        return None, None
    if len(vals) == 1:
        return vals[0], None
    return float(np.mean(vals)), float(np.std(vals, ddof=1))


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def headline_table(
    rows: list[list[dict]],
    labels: list[list[str]],
    head: list[str],
    benchmarks: BenchmarkRegistry | None = None,
) -> str:
    """A Markdown table: one row per group of jobs (their mean, ± sd over seeds), each headline
    column's value bold when it is significantly best (reporting.verdict.significant_best)."""
    cols = headline_keys([j for g in rows for j in g], benchmarks)
    lines = [
        "| " + " | ".join([*head, *cols]) + " |",
        "|" + "---|" * (len(head) + len(cols)),
    ]
    values = {c: [group_value(g, c) for g in rows] for c in cols}
    bold = {c: significant_best(rows, c, [m for m, _ in values[c]], benchmarks) for c in cols}
    for i, group in enumerate(rows):
        cells = list(labels[i])
        for c in cols:
            mean, sd = values[c][i]
            text = _fmt(mean) if mean is not None else _fmt(group[0]["summary"].get(c))
            if sd is not None:
                text += f" ± {sd:.2g}"
            cells.append(f"**{text}**" if text and bold[c] == i else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


BOLD_NOTE = (
    "Bold: significantly best in its column (p < 0.05 against every other row, Holm-corrected; "
    "paired on benchmark items, unpaired on data metrics' records). Columns without per-item "
    "data are never bold."
)


def compare(
    paths: list[str | Path],
    out_dir: str | Path | None = None,
    quiet: bool = False,
    pair: tuple[str, str] | None = None,
) -> Path:
    job_dirs = find_jobs(paths)
    if not job_dirs:
        raise SystemExit(f"no job with a summary.json under {', '.join(map(str, paths))}")
    jobs = [load_job(p) for p in job_dirs]
    benchmarks = comparison_registry(jobs)  # every job's own, rebuilt from its saved config
    swept = swept_keys(jobs)
    for job in jobs:
        job["label"] = (
            ", ".join(f"{k}={job['overrides'][k]}" for k in swept if k in job["overrides"])
            or Path(job["dir"]).name
        )
    out = Path(out_dir or (Path(paths[0]) if len(paths) == 1 else Path.cwd()))
    out.mkdir(parents=True, exist_ok=True)

    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    cols = numeric_keys(jobs)
    w.writerow(["job", *swept, "status", *cols])
    for job in jobs:
        s = job["summary"]
        w.writerow(
            [
                job["dir"],
                *(job["overrides"].get(k, "") for k in swept),
                s.get("status"),
                *(s.get(c) for c in cols),
            ]
        )
    write_text_atomic(out / "comparison.csv", buf.getvalue())

    table = headline_table(
        [[job] for job in jobs],
        [
            [
                Path(job["dir"]).name,
                *(job["overrides"].get(k, "") for k in swept),
                job["summary"].get("status", ""),
            ]
            for job in jobs
        ],
        ["job", *swept, "status"],
        benchmarks,
    )
    groups = seed_groups([j for j in jobs if j["summary"].get("status") == "ok"])
    if any(len(g) > 1 for g in groups):
        keys = [k for k in swept if k != SEED_KEY]
        over_seeds = headline_table(
            groups,
            [[*(g[0]["overrides"].get(k, "") for k in keys), str(len(g))] for g in groups],
            [*keys, "seeds"],
            benchmarks,
        )
        table = f"## Over seeds (mean ± sd)\n\n{over_seeds}\n\n## Per job\n\n{table}"
    write_text_atomic(out / "comparison.md", f"{table}\n\n{BOLD_NOTE}\n")
    verdict_lines: list[str] = []
    verdict_error: UserFacingError | None = None
    if pair:
        try:
            ok = [j for j in jobs if j["summary"].get("status") == "ok"]
            rows = verdict_rows(ok, *pair, benchmarks=benchmarks)
            files = write_verdict(rows, pair[0], pair[1], out, benchmarks=benchmarks)
            verdict_lines = [
                "## Verdict",
                "",
                f"A = `{pair[0]}`, B = `{pair[1]}`: [verdict.md](verdict.md) (all rows: "
                "verdict.csv).",
                "",
            ]
            if files["plot"] is not None:
                verdict_lines += [f"![differences](plots/{files['plot'].name})", ""]
        except UserFacingError as e:  # the report is still written; the error is raised after
            verdict_error = e
            verdict_lines = ["## Verdict", "", f"Not written: {e}", ""]

    figs = plots.figures(jobs, out / "plots", benchmarks)
    report = [
        "# Comparison",
        "",
        f"{len(jobs)} job(s).",
        "",
        table,
        "",
        BOLD_NOTE + " All numbers: comparison.csv.",
        "",
    ]
    report += verdict_lines
    report += time_table(jobs)
    for title, path in figs.items():
        if path is not None:
            report += [f"## {title}", "", f"![{title}](plots/{path.name})", ""]
    skipped = [t for t, p in figs.items() if p is None]
    if skipped:
        report += [f"Not plotted (no data in these jobs): {', '.join(skipped)}.", ""]
    write_text_atomic(out / "report.md", "\n".join(report))
    if not quiet:
        print(table)
        print(f"\nreport: {out / 'report.md'}")
    if verdict_error is not None:
        raise verdict_error
    return out / "report.md"


def time_table(jobs: list[dict]) -> list[str]:
    """Report lines: wall-clock seconds per stage and job (model loads counted inside their
    stage and again on their own), and the number format each job ran in."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job["summary"] if k.startswith("time/") and k not in keys]
    if not keys:
        return []
    fmt = ("hardware/engine_dtype", "hardware/train_precision")
    lines = [
        "## Where the time goes",
        "",
        "| job | "
        + " | ".join(k.removeprefix("time/") + " (s)" for k in keys)
        + " | "
        + " | ".join(k.removeprefix("hardware/") for k in fmt)
        + " |",
        "|" + "---|" * (len(keys) + len(fmt) + 1),
    ]
    for job in jobs:
        s = job["summary"]
        cells = [job["label"], *(_fmt(s.get(k)) for k in keys), *(_fmt(s.get(k)) for k in fmt)]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


class CompareCallback(Callback):
    """Hydra's callback (conf/config.yaml › hydra.callbacks.compare). At the end of a multirun:
    the comparison table and report in the sweep directory, its outcome in `<sweep>/sweep.json`
    (a failed comparison makes run.py exit 1). With `record` (a file run.py names for each
    invocation): this invocation's run folder, or its sweep folder and start time, which is how
    run.py finds the summary.json files its exit status reads (reporting.jobs)."""

    def __init__(self, record: str | None = None) -> None:
        self.record = record
        self._started = 0.0

    def on_run_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        if self.record and job_return is not None:
            fields = run_record(job_return)
            record_invocation(self.record, "run", fields.pop("dir"), **fields)

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._started = time.time() - 1.0  # file times may be coarser than the clock
        sweep_dir = Path(config.hydra.sweep.dir)
        write_sweep_outcome(sweep_dir, "pending")
        if self.record:
            record_invocation(self.record, "multirun", sweep_dir, since=self._started)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            pair = config_pair(config)
            compare([sweep_dir], pair=pair)
        except SystemExit as e:  # no job wrote a summary.json: the jobs' own failures say why
            log.warning("compare: %s", e)
            write_sweep_outcome(sweep_dir, "skipped", str(e))
            return
        except UserFacingError as e:  # e.g. an arm of compare.pair that matches no job
            log.error("compare: %s", e)
            write_sweep_outcome(sweep_dir, "failed", str(e))
            return
        except Exception as e:  # a bug here must not hide the jobs' own results or exit code
            log.exception("compare: the comparison failed")
            write_sweep_outcome(sweep_dir, "failed", repr(e))
            return
        write_sweep_outcome(sweep_dir, "ok")
        if pair:
            log.info("verdict: %s", sweep_dir / "verdict.md")
            from reporting.tracking import log_verdict

            log_verdict(config, sweep_dir)


def config_pair(config: Any) -> tuple[str, str] | None:
    """`compare.pair` of a config: two arms (each `key=value ...`), or None."""
    pair = (config.get("compare") or {}).get("pair")
    if not pair:
        return None
    pair = list(pair)
    if len(pair) != 2:
        raise ConfigError(f"compare.pair: two arms, e.g. ['model=a','model=b'], not {pair}")
    return str(pair[0]), str(pair[1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.compare",
        description="Compare jobs: a table and a report with plots; with --pair, the verdict of "
        "arm A vs arm B (verdict.md, verdict.csv, a forest plot).",
    )
    ap.add_argument("paths", nargs="+", help="a multirun directory, or run directories")
    ap.add_argument("--out", help="where to write (default: the multirun directory)")
    ap.add_argument(
        "--pair",
        nargs=2,
        metavar=("A", "B"),
        help="two arms, each the override(s) naming its jobs: --pair model=a model=b "
        "(several overrides in one quoted argument: 'model=a filter=ifd')",
    )
    args = ap.parse_args(argv)
    try:
        report = compare(args.paths, args.out, pair=tuple(args.pair) if args.pair else None)
    except UserFacingError as e:
        raise SystemExit(f"error: {e}") from None
    if args.pair:
        print(f"\n{(report.parent / 'verdict.md').read_text()}")
        print(f"verdict: {report.parent / 'verdict.md'}")


if __name__ == "__main__":
    main()
