"""The study's figures (matplotlib, PNG). Each takes the jobs of a comparison and returns the path
it wrote, or None when its data is absent (the report then skips it). `figures` decides which to
draw from the registries: a metric's `Stat.per_round` / `Stat.scaling` / `Stat.labels` and
`Field.plot`, the benchmarks' headlines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from evaluation.benchmarks import BENCHMARKS, BenchmarkRegistry  # noqa: E402
from metrics.base import METRICS  # noqa: E402


def _rounds(job: dict) -> list[int]:
    return sorted(
        int(k.split("/")[0].split("_")[1])
        for k in job["summary"]
        if k.startswith("round_") and k.endswith("/evolve/attempted")
    )


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    return _write(fig, out)


def _write(fig, out: Path) -> Path:
    """The figure as PNG, written atomically (a reader never sees half a file)."""
    import io

    from core.records import write_bytes_atomic

    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    write_bytes_atomic(out, buf.getvalue())
    return out


def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    from scipy.stats import gaussian_kde

    if len(values) < 3 or np.ptp(values) == 0:
        return None
    return gaussian_kde(values)(grid)


def label_bars(
    jobs: list[dict], key: str, labels: tuple[str, ...], what: str, out: Path
) -> Path | None:
    """Per round and job: the share of each label (`round_<r>/<key>/percent/<label>`)."""
    rows = []
    for job in jobs:
        for r in _rounds(job):
            pct = [job["summary"].get(f"round_{r}/{key}/percent/{lab}") for lab in labels]
            if any(p is not None for p in pct):
                rows.append((f"{job['label']} · r{r}", [p or 0.0 for p in pct]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4))
    width = 0.8 / len(labels)
    x = np.arange(len(rows))
    for k, lab in enumerate(labels):
        ax.bar(x + k * width, [r[1][k] for r in rows], width, label=lab)
    ax.set_xticks(x + 0.4 - width / 2, [r[0] for r in rows], rotation=20, ha="right")
    ax.set_ylabel("% of instructions")
    ax.set_title(f"{what.capitalize()} labels by round and evolver")
    ax.legend(title=what, fontsize=8)
    return _save(fig, out)


def per_round_line(jobs: list[dict], key: str, ylabel: str, title: str, out: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = False
    for job in jobs:
        pts = [(r, job["summary"].get(f"round_{r}/{key}")) for r in _rounds(job)]
        pts = [(r, v) for r, v in pts if v is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=job["label"])
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("evolution round")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return _save(fig, out)


def _job_scores(job: dict, field: str) -> np.ndarray:
    """Per-record values of `field` from the job's last scored round."""
    for r in reversed(_rounds(job)):
        path = Path(job["dir"]) / f"round_{r}" / "scores.jsonl"
        if path.is_file():
            vals = []
            for line in path.open():
                v = json.loads(line).get(field)
                if isinstance(v, list):
                    vals += v
                elif v is not None:
                    vals.append(v)
            return np.asarray(vals, dtype=float)
    return np.asarray([])


def distribution(
    jobs: list[dict],
    field: str,
    xlabel: str,
    title: str,
    out: Path,
    bins: int = 20,
    hist: bool = True,
) -> Path | None:
    data = [(job["label"], _job_scores(job, field)) for job in jobs]
    data = [(lab, v) for lab, v in data if len(v)]
    if not data:
        return None
    lo = min(v.min() for _, v in data)
    hi = max(v.max() for _, v in data)
    grid = np.linspace(lo, hi if hi > lo else lo + 1, 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    for lab, v in data:
        color = None
        if hist:
            _, _, patches = ax.hist(
                v,
                bins=bins,
                range=(lo, grid[-1]),
                density=True,
                alpha=0.35,
                label=f"{lab} (n={len(v)})",
            )
            color = patches[0].get_facecolor()[:3]
        density = _kde(v, grid)
        if density is not None:
            ax.plot(grid, density, color=color, label=None if hist else lab)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, out)


def scaling_figure(jobs: list[dict], keys: list[tuple[str, str]], out: Path) -> Path | None:
    sizes = {job["summary"].get("model/size_b") for job in jobs}
    if len(sizes - {None}) < 2:
        return None
    series = []
    for key, label in keys:
        pts = sorted(
            (job["summary"]["model/size_b"], v)
            for job in jobs
            if (v := _last_round_value(job, key)) is not None and job["summary"].get("model/size_b")
        )
        if len(pts) >= 2:
            series.append((label, pts))
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(4.5 * len(series), 4), squeeze=False)
    for ax, (label, pts) in zip(axes[0], series):
        ax.plot(*zip(*pts), marker="o")
        ax.set_xscale("log")
        ax.set_xlabel("evolver size (B parameters)")
        ax.set_title(label)
    fig.suptitle("Scaling with the evolver's size")
    return _save(fig, out)


def _last_round_value(job: dict, key: str) -> Any:
    if key in job["summary"]:
        return job["summary"][key]
    for r in reversed(_rounds(job)):
        v = job["summary"].get(f"round_{r}/{key}")
        if v is not None:
            return v
    return None


def benchmarks(
    jobs: list[dict], out: Path, registry: BenchmarkRegistry | None = None
) -> Path | None:
    keys = [
        k
        for k in (registry if registry is not None else BENCHMARKS).headline_keys()
        if any(job["summary"].get(k) is not None for job in jobs)
    ]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys)) + 3, 4.2))
    width = 0.8 / len(jobs)
    x = np.arange(len(keys))
    for k, job in enumerate(jobs):
        ax.bar(
            x + k * width, [job["summary"].get(key) or 0 for key in keys], width, label=job["label"]
        )
    ax.set_xticks(x + 0.4 - width / 2, keys, rotation=20, ha="right")
    ax.set_title("Benchmark scores of the fine-tuned students (by job)")
    ax.set_ylim(0, 1.0)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out)


def benchmarks_by(
    jobs: list[dict],
    key: str,
    override: str,
    xlabel: str,
    out: Path,
    log_x: bool = False,
    registry: BenchmarkRegistry | None = None,
) -> Path | None:
    """Each benchmark against a number of the summary (`rounds`, `model/size_b`): one line per
    group of jobs that differ only in `override` (the Hydra key that sets it)."""
    present = [
        b
        for b in (registry if registry is not None else BENCHMARKS).headline_keys()
        if any(job["summary"].get(b) is not None for job in jobs)
    ]
    if not present or len({job["summary"].get(key) for job in jobs} - {None}) < 2:
        return None
    values: dict[str, set] = {}
    for job in jobs:
        for k, v in job["overrides"].items():
            values.setdefault(k, set()).add(v)
    varying = [k for k, v in values.items() if len(v) > 1 and k != override]
    groups: dict[str, list[tuple[float, dict]]] = {}
    for job in jobs:
        x = job["summary"].get(key)
        if x is None:
            continue
        label = ", ".join(f"{k}={job['overrides'].get(k, '')}" for k in varying)
        groups.setdefault(label or "all jobs", []).append((float(x), job["summary"]))
    ncols = min(3, len(present))
    nrows = -(-len(present) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows + 0.8), squeeze=False)
    for ax in axes.flat[len(present) :]:
        ax.set_visible(False)
    for ax, bench in zip(axes.flat, present):
        for k, (label, pts) in enumerate(groups.items()):
            pts = sorted((x, s[bench]) for x, s in pts if s.get(bench) is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=f"C{k}", label=label)
        ax.set_title(bench, fontsize=10)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel(xlabel, fontsize=9)
        if log_x:
            ax.set_xscale("log")
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    fig.suptitle(f"Benchmark scores of the fine-tuned students by {xlabel}")
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 3), 1, 1))
    return _write(fig, out)


def win_tie_lose(jobs: list[dict], out: Path) -> Path | None:
    """Items the job's model wins / ties / loses against its reference; items whose verdicts
    could not be read are a separate segment, never folded into ties."""
    outcomes = (("win", "tab:green"), ("tie", "tab:gray"), ("lose", "tab:red"))
    outcomes += (("unparseable", "#dddddd"),)
    rows = []
    for job in jobs:
        vals = [job["summary"].get(f"judge/{k}") for k, _ in outcomes]
        if all(v is not None for v in vals[:3]):
            rows.append((job["label"], [v or 0 for v in vals]))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.8))
    left = np.zeros(len(rows))
    for k, (name, color) in enumerate(outcomes):
        vals = np.array([r[1][k] for r in rows], dtype=float)
        ax.barh([r[0] for r in rows], vals, left=left, color=color, label=name, edgecolor="white")
        left += vals
    against = {job["summary"].get("judge/against") for job in jobs} - {None}
    ax.set_xlabel("items")
    ax.set_title(
        "Pairwise judge: win / tie / lose"
        + (f" against {', '.join(sorted(against))}" if against else "")
    )
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, out)


def figures(
    jobs: list[dict], out: Path, registry: BenchmarkRegistry | None = None
) -> dict[str, Path | None]:
    """Every figure of a comparison report, {title: path or None}; the metric figures come from
    the metric registry, in registry order, the benchmark figures from `registry` (the jobs'
    benchmarks, reporting.jobs; default: the built-ins)."""
    figs: dict[str, Path | None] = {}
    scaling: list[tuple[str, str]] = []
    for m in METRICS:
        for s in m.stats:
            key = f"score/{m.name}/{s.key}"
            label = s.label or f"{m.name} {s.key}"
            if s.labels:
                figs[f"{label.capitalize()} labels"] = label_bars(
                    jobs, key, s.labels, label, out / f"{s.key}.png"
                )
            if s.per_round:
                figs[f"{label} per round"] = per_round_line(
                    jobs,
                    key,
                    label,
                    f"{label} of evolved instructions",
                    out / f"{s.key.removesuffix('_mean')}.png",
                )
            if s.scaling:
                scaling.append((key, label))
        for f in m.fields:
            if f.plot:
                figs[f"{f.label or f.name} ({m.name})"] = distribution(
                    jobs,
                    f.name,
                    f.label or f.name,
                    f"{m.name}: {f.label or f.name} (last round)",
                    out / f"{f.name}.png",
                    hist=f.plot == "hist",
                )
    figs["Scaling with evolver size"] = scaling_figure(jobs, scaling, out / "scaling.png")
    figs["Benchmarks"] = benchmarks(jobs, out / "benchmarks.png", registry)
    figs["Benchmarks across rounds"] = benchmarks_by(
        jobs,
        "rounds",
        "rounds",
        "evolution rounds",
        out / "benchmarks_rounds.png",
        registry=registry,
    )
    figs["Benchmarks across evolver size"] = benchmarks_by(
        jobs,
        "model/size_b",
        "model",
        "evolver size (B parameters)",
        out / "benchmarks_scaling.png",
        log_x=True,
        registry=registry,
    )
    figs["Pairwise judge"] = win_tie_lose(jobs, out / "win_tie_lose.png")
    return figs


def forest(
    rows: list[Any],
    arm_a: str,
    arm_b: str,
    out: Path,
    registry: BenchmarkRegistry | None = None,
) -> Path | None:
    """The verdict's differences (A − B) with their 95% CIs, one line per metric: benchmarks
    and win rates in points (their scale is shared), data metrics relative to B's value (their
    scales are not). Significant rows (Holm) are filled, the rest hollow."""
    if not rows:
        return None
    registry = registry if registry is not None else BENCHMARKS
    paired = [r for r in rows if registry.for_headline(r.metric) or r.metric.startswith("judge/")]
    relative = [r for r in rows if r not in paired and r.b.value]
    panels = [
        (p, title, scale)
        for p, title, scale in (
            (paired, "benchmarks: A − B (points)", lambda r: 100.0),
            (relative, "data metrics: (A − B) / |B| (%)", lambda r: 100.0 / abs(r.b.value)),
        )
        if p
    ]
    if not panels:
        return None
    heights = [len(p) for p, _, _ in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(8, 0.32 * sum(heights) + 1.4 * len(panels)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, (part, title, scale) in zip(axes[:, 0], panels):
        labels = [f"{r.context} · {r.metric}" if r.context else r.metric for r in part]
        y = np.arange(len(part))[::-1]
        for yi, r in zip(y, part):
            k = scale(r)
            significant = r.p_holm < 0.05
            ax.errorbar(
                r.diff.value * k,
                yi,
                xerr=[
                    [max(0.0, (r.diff.value - r.diff.low) * k)],
                    [max(0.0, (r.diff.high - r.diff.value) * k)],
                ],
                fmt="o",
                color="tab:blue" if significant else "tab:gray",
                mfc="tab:blue" if significant else "white",
                capsize=3,
            )
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"A = {arm_a}  vs  B = {arm_b}", fontsize=10)
    return _save(fig, out)
