"""Compare jobs side by side: `python -m reporting.compare <multirun dir | run dirs ...>`.

Writes `comparison.md` and `comparison.csv` (a row per job: the swept keys first, then the numbers
of summary.json — the headline ones in Markdown with the best value per column marked, all of them
in CSV) and `report.md` with the study's plots under `plots/`. run.py calls it at the end of
every multirun (see CompareCallback).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from core.records import write_text_atomic
from reporting import plots
from reporting.summary import direction, is_headline

log = logging.getLogger(__name__)

PATH_KEYS = ("cache_dir", "models_dir", "data.path", "hydra.")


def find_jobs(paths: list[str | Path]) -> list[Path]:
    jobs: list[Path] = []
    for p in map(Path, paths):
        if (p / "summary.json").is_file():
            jobs.append(p)
        else:
            jobs += sorted((d.parent for d in p.glob("*/summary.json")), key=_job_order)
    return jobs


def _job_order(p: Path) -> tuple:
    return (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)


def load_job(path: Path) -> dict:
    summary = json.loads((path / "summary.json").read_text())
    overrides: dict[str, str] = {}
    ov = path / ".hydra" / "overrides.yaml"
    if ov.is_file():
        for item in yaml.safe_load(ov.read_text()) or []:
            key, _, value = str(item).partition("=")
            if not key.startswith(PATH_KEYS):
                overrides[key.lstrip("+~")] = value
    return {"dir": str(path), "summary": summary, "overrides": overrides}


def headline_keys(jobs: list[dict]) -> list[str]:
    keys: list[str] = []
    for job in jobs:
        for k, v in job["summary"].items():
            if k in keys or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if is_headline(k):
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


def best(values: list[Any], key: str) -> Any:
    """The best value of a column (its direction from the registries); None for facts."""
    higher = direction(key)
    if higher is None:
        return None
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) < 2 or len(set(nums)) < 2:
        return None
    return max(nums) if higher else min(nums)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def compare(
    paths: list[str | Path], out_dir: str | Path | None = None, quiet: bool = False
) -> Path:
    job_dirs = find_jobs(paths)
    if not job_dirs:
        raise SystemExit(f"no job with a summary.json under {', '.join(map(str, paths))}")
    jobs = [load_job(p) for p in job_dirs]
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

    cols = headline_keys(jobs)
    marks = {c: best([job["summary"].get(c) for job in jobs], c) for c in cols}
    lines = [
        "| job | " + " | ".join([*swept, "status", *cols]) + " |",
        "|" + "---|" * (len(swept) + len(cols) + 2),
    ]
    for job in jobs:
        s = job["summary"]
        cells = [
            Path(job["dir"]).name,
            *(job["overrides"].get(k, "") for k in swept),
            s.get("status", ""),
        ]
        for c in cols:
            v = s.get(c)
            cells.append(f"**{_fmt(v)}**" if v is not None and v == marks[c] else _fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    write_text_atomic(out / "comparison.md", table + "\n\nBold: the best value of its column.\n")

    figs = plots.figures(jobs, out / "plots")
    report = [
        "# Comparison",
        "",
        f"{len(jobs)} job(s).",
        "",
        table,
        "",
        "Bold: the best value of its column. All numbers: comparison.csv.",
        "",
    ]
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


# Jobs of the multirun that just ended that did not finish (read by run.py for its exit code).
SWEEP_FAILURES: list[dict] = []


def sweep_failures(sweep_dir: Path, since: float = 0.0) -> list[dict]:
    """The jobs under `sweep_dir` started at or after `since` (their `.hydra/` folder) whose
    summary.json is missing or says anything but ok: what the jobs themselves recorded, so it
    holds whichever process or machine ran them (joblib workers, SLURM tasks)."""
    failed = []
    for hydra_dir in sorted(Path(sweep_dir).glob("*/.hydra")):
        job = hydra_dir.parent
        if hydra_dir.stat().st_mtime < since:
            continue
        try:
            summary = json.loads((job / "summary.json").read_text())
        except (OSError, ValueError):
            failed.append({"dir": str(job), "error": "no readable summary.json (the job died)"})
            continue
        if summary.get("status") != "ok":
            error = summary.get("error") or summary.get("status") or "no status"
            failed.append({"dir": str(job), "error": str(error)})
    return failed


class CompareCallback(Callback):
    """At the end of a multirun: the comparison table and report in the sweep directory, and
    the list of the jobs that failed (run.py exits 1 when there is one)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._started = time.time() - 1.0  # file times may be coarser than the clock

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            compare([sweep_dir])
        except SystemExit as e:
            log.warning("compare: %s", e)
        SWEEP_FAILURES[:] = sweep_failures(sweep_dir, getattr(self, "_started", 0.0))


def main() -> None:
    ap = argparse.ArgumentParser(description="Compare jobs: a table and a report with plots.")
    ap.add_argument("paths", nargs="+", help="a multirun directory, or run directories")
    ap.add_argument("--out", help="where to write (default: the multirun directory)")
    args = ap.parse_args()
    compare(args.paths, args.out)


if __name__ == "__main__":
    main()
