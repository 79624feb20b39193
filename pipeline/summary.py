"""summary.json: one flat dict of every headline number of a job, and its printed form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from evaluation.tasks import HEADLINES

BENCHMARKS = tuple(HEADLINES)  # ifeval/prompt_strict, ..., mbpp/pass@1

HEADLINE = (
    "evolve/parsed",
    "evolve/failed",
    "evolve/parse_rate",
    "evolve/instruction_words_mean",
    "respond/responded",
    "respond/response_words_mean",
    "score/judge/complexity_mean",
    "score/diversity/nn_l2sq_mean",
    "score/confidence/mean",
    "score/ifd/ifd_mean",
    "score/ifd/ic_ifd_mean",
    "score/reward/mean",
)


def flatten(prefix: str, obj: Any, out: dict) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            flatten(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (int, float, str, bool)) or obj is None:
        out[prefix] = round(obj, 4) if isinstance(obj, float) else obj


def build_summary(cfg: DictConfig, metrics: dict, pool: Any, cache: Any, n_seeds: int) -> dict:
    s: dict[str, Any] = {
        "status": "ok",
        "model": cfg.model.name,
        "model/size_b": cfg.model.get("size_b"),
        "scenario": cfg.scenario.name,
        "engine": pool.kind,
        "rounds": int(cfg.rounds),
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


def print_summary(summary: dict, run_dir: Path) -> None:
    rows = [(k, v) for k, v in summary.items() if k.split("/", 1)[-1] in HEADLINE]
    extra = ("filter/kept", "train/steps", "train/final_loss", *BENCHMARKS)
    extra += ("engine/prompts", "cache/hits")
    rows += [(k, summary[k]) for k in extra if k in summary]
    rows += [(k, v) for k, v in summary.items() if k.startswith(("time/", "hardware/"))]
    width = max(len(k) for k, _ in rows)
    print(f"\n== {summary['model']} · {summary['scenario']} · {summary['rounds']} round(s) ==")
    for k, v in rows:
        print(f"  {k:<{width}}  {round(v, 3) if isinstance(v, float) else v}")
    print(f"  outputs: {run_dir}  (report: {Path(run_dir) / 'report.md'})\n")
