"""The study protocol of every experiment preset (reporting/protocol.yaml), as data.

`python -m reporting.protocol` prints the protocol table of docs/paper.md (`--readme docs/paper.md`
rewrites it there); `--check` composes every job of every preset and reports where a preset
differs from its row (tests/test_study.py runs the same check, and checks that docs/paper.md's
table is this module's rendering).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path
from typing import Any

import yaml

from core.records import write_text_atomic
from engines.turns import turn_end_text

PROTOCOL = Path(__file__).with_name("protocol.yaml")
README_START = "<!-- protocol table: python -m reporting.protocol -->"
README_END = "<!-- end of protocol table -->"
FULL_STAGES = "evolve+respond+score+filter+train+evaluate+report"
# The models a paper-protocol student must be (SPEC §9: base checkpoints).
SFT_BY_SIZE = {"0.5b": "small", "1.5b": "small", "3b": "mid", "7b": "mid"}  # else lora


def load() -> dict[str, Any]:
    return yaml.safe_load(PROTOCOL.read_text(encoding="utf-8"))


# Each student's turn end, as the protocol records it (protocol.yaml › students).
STOPS: dict[str, str] = load().get("students") or {}


def jobs(row: dict) -> list[dict[str, str]]:
    """Every job of a row's sweep: {key: value as Hydra's sweeper passes it}."""
    varies = row.get("varies") or {}
    keys = list(varies)
    return [
        {k: _as_override(v) for k, v in zip(keys, combo)}
        for combo in itertools.product(*(varies[k] for k in keys))
    ]


def _as_override(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _actual(cfg: Any) -> dict[str, Any]:
    """The protocol's `fixed` fields read from a composed job config."""
    f = cfg.filter
    sc = cfg.scenario
    return {
        "scenario": sc.name,
        "stages": "+".join(cfg.stages),
        "student": cfg.train.student.name,
        "scorer": cfg.metrics.ifd.model or "evolver",
        "judge": cfg.metrics.judge.model or "evolver",
        # No respond stage: the records keep the outputs they came with (the seed data's own).
        "responder": (cfg.respond.model or "evolver") if "respond" in cfg.stages else "seed data",
        "summarizer": (sc.get("summarizer") or "evolver")
        if sc.name == "auto_evol_instruct"
        else None,
        "lora": _lora(cfg.train),
        "autoif": _autoif(sc) if sc.name == "autoif" else None,
        "reward": cfg.metrics.reward.model if cfg.metrics.reward.get("enabled") else "off",
        "filter": f.name if f.name == "none" else f"{f.name}@{f.keep_ratio}",
        "arm_size": "all" if f.equal_size is None else f.equal_size,
        "keep_failed": bool(cfg.scenario.get("keep_failed", False)),
        "rounds": int(cfg.rounds),
        "temperature": float(cfg.generation.evolve.temperature),
        "top_p": float(cfg.generation.evolve.top_p),
        "equal_across": f.equal_across,
        "calibration": _calibration(cfg.calibration),
        "pairwise": _pairwise(cfg.eval.pairwise),
        "train": cfg.train.name,
        "eval": cfg.eval.name,
        "eval_variant": cfg.eval.get("variant", "lm_eval"),
    }


def _lora(train: Any) -> str | None:
    """LoRA's rank / alpha / dropout (the paper's Table 7: r8/a8/d0), or None for full SFT."""
    if train.method != "lora":
        return None
    lo = train.lora
    return f"r{lo.r}/a{lo.alpha}/d{lo.dropout:g}"


def _autoif(sc: Any) -> str:
    """How AutoIF ran: its seed constraints, where the arms are cut, whether responses are
    verified and whether "true"/"false" strings count as booleans (the paper: upstream's)."""
    seeds = "bundled seeds" if sc.get("seeds") is None else "seeds from a file"
    cut = sc.get("equal_size_constraints")
    parts = [seeds, f"cut to {cut} constraints" if cut is not None else "no constraint cut"]
    parts.append("responses verified" if sc.get("verify_responses", True) else "every response")
    parts.append("string booleans" if sc.get("string_booleans", True) else "no string booleans")
    return ", ".join(parts)


def _calibration(cal: Any) -> str:
    """The calibration target, whether on or off (a preset may sweep `calibration.enabled`)."""
    target = cal.target_model if cal.target_model is not None else cal.target
    return "off" if target is None else f"to {target}"


def _pairwise(pw: Any) -> str:
    if not pw.enabled:
        return "off"
    against = pw.against_arm or pw.against or "the untrained student"
    return f"against {against} on {pw.instructions}, judge {pw.judge or 'evolver'}"


def check_job(name: str, row: dict, job: dict[str, str], cfg: Any, domains: dict) -> list[str]:
    """Where job `job` of preset `name` (composed as `cfg`) differs from its protocol row."""
    problems = []
    actual = _actual(cfg)
    varied = set(job)
    for key, want in (row.get("fixed") or {}).items():
        if want is None or key in varied or (key == "filter" and "filter" in varied):
            continue
        if key not in actual:
            problems.append(f"{name}: the protocol holds {key!r}, which no job config names")
            continue
        if actual[key] != want:
            problems.append(f"{name} {job}: {key} is {actual[key]!r}, the protocol says {want!r}")
    if "student_size" in job:  # the student varies, with its size's SFT settings
        size = job["student_size"].removeprefix("qwen2.5_")
        if actual["student"] != f"qwen2.5_{size}_base":
            problems.append(f"{name} {job}: student {actual['student']}")
        if actual["train"] != f"qwen25_{SFT_BY_SIZE.get(size, 'lora')}":
            problems.append(f"{name} {job}: train {actual['train']}")
    if "benchmarks" in row and list(cfg.eval.tasks) != list(row["benchmarks"]):
        problems.append(f"{name} {job}: benchmarks {list(cfg.eval.tasks)}")
    student = cfg.train.student
    if student.get("chat_template"):
        want = (row.get("stops") or {}).get(student.name) or STOPS.get(student.name)
        got = turn_end_text(student.chat_template)
        if want is not None and got != want:
            problems.append(
                f"{name} {job}: student {student.name} ends a turn with {got!r}, the protocol "
                f"says {want!r}"
            )
    if "domain" in job:
        d = domains[job["domain"]]
        if actual["scenario"] == "evol_instruct" and "evolve" in cfg.stages:
            if bool(cfg.scenario.use_breadth) != bool(d.get("breadth")):
                problems.append(
                    f"{name} {job}: breadth {cfg.scenario.use_breadth}, the domain says "
                    f"{d.get('breadth')} (the paper's A.1)"
                )
        if "data" not in row and cfg.data.name != d["data"]:
            problems.append(f"{name} {job}: data {cfg.data.name}, the domain says {d['data']}")
        if "benchmarks" not in row and list(cfg.eval.tasks) != list(d["benchmarks"]):
            problems.append(f"{name} {job}: benchmarks {list(cfg.eval.tasks)}")
    if row.get("paper_protocol"):
        arms = set((row.get("varies") or {}).get("model") or [])
        if not actual["student"].endswith("_base") or not str(actual["scorer"]).endswith("_base"):
            problems.append(f"{name} {job}: the student and the scorer must be base models")
        if actual["judge"] in arms or actual["judge"] == "evolver":
            problems.append(f"{name} {job}: the judge {actual['judge']} is an arm")
        if actual["responder"] in arms or actual["responder"] == "evolver":
            problems.append(
                f"{name} {job}: the responder {actual['responder']} is an arm (the paper holds "
                "one responder fixed, SPEC §2)"
            )
        if actual["summarizer"] in arms or actual["summarizer"] == "evolver":
            problems.append(
                f"{name} {job}: the method summariser {actual['summarizer']} is an arm (the "
                "paper's §3.3: one model for both)"
            )
        if actual["lora"] is not None and actual["lora"] != "r8/a8/d0":
            problems.append(f"{name} {job}: LoRA {actual['lora']}, Table 7 says r8/a8/d0")
        if cfg.generation.evolve.max_tokens != 2048 or cfg.engine.kind != "vllm":
            problems.append(f"{name} {job}: not the paper's decoding on vLLM")
        if not str(cfg.train.strategy).startswith("deepspeed"):
            problems.append(f"{name} {job}: train.strategy {cfg.train.strategy}")
    return problems


def check(names: list[str] | None = None, workers: int | None = None) -> list[str]:
    """Every job of every preset (or of `names`) against the protocol; the presets are shared
    out over `workers` processes (default: the CPUs, at most 4)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    from core.config import options

    rows = load()["presets"]
    problems = []
    presets = set(options("experiment"))
    if missing := presets - set(rows):
        problems.append(f"presets without a protocol row: {sorted(missing)}")
    if extra := set(rows) - presets:
        problems.append(f"protocol rows without a preset: {sorted(extra)}")
    todo = list(names or sorted(presets & set(rows)))
    workers = workers or min(4, os.cpu_count() or 1)
    parts = [todo[k::workers] for k in range(workers) if todo[k::workers]]
    if len(parts) <= 1:
        return problems + _check(todo)
    with ProcessPoolExecutor(len(parts)) as pool:
        for found in pool.map(_check, parts):
            problems += found
    return problems


def _check(names: list[str]) -> list[str]:
    """`check` for some presets, in one Hydra (compose_config uses the initialised one)."""
    from hydra import initialize_config_dir

    from core.config import CONF_DIR, compose_config, register_resolvers

    register_resolvers()
    data = load()
    problems = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name in names:
            row = data["presets"][name]
            swept = _sweep_jobs(name)
            want = jobs(row)
            if sorted(map(_key, swept)) != sorted(map(_key, want)):
                problems.append(f"{name}: the sweep runs {swept}, the protocol says {want}")
                continue
            for job in want:
                overrides = [f"experiment={name}", *(f"{k}={v}" for k, v in job.items())]
                problems += check_job(name, row, job, compose_config(overrides), data["domains"])
    return problems


def _key(job: dict) -> tuple:
    """A job for comparison: Hydra writes booleans as True/False, the protocol as true/false."""
    return tuple(sorted((k, v.lower() if v in ("True", "False") else v) for k, v in job.items()))


def _sweep_jobs(name: str) -> list[dict[str, str]]:
    """The jobs Hydra's basic sweeper makes of a preset's `hydra.sweeper.params` (inside an
    initialised Hydra: `check`)."""
    from hydra import compose
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params or {}
    if not params:
        return [{}]
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [
        dict(o.split("=", 1) for o in job)
        for batch in BasicSweeper.split_arguments(parsed, None)
        for job in batch
    ]


def _fixed_text(fixed: dict) -> str:
    labels = {
        "student": "student",
        "scorer": "IFD scorer",
        "judge": "judge",
        "responder": "responder",
        "summarizer": "method summariser",
        "lora": "LoRA",
        "autoif": "AutoIF",
        "reward": "reward model",
        "stages": "stages",
        "filter": "filter",
        "arm_size": "arm size",
        "keep_failed": "failed evolutions kept",
        "rounds": "rounds",
        "temperature": "T",
        "top_p": "top-p",
        "equal_across": "arms by",
        "calibration": "calibration",
        "pairwise": "pairwise judge",
        "scenario": "scenario",
        "train": "train",
        "eval": "eval",
        "eval_variant": "tasks as",
    }
    parts = []
    for key, label in labels.items():
        if key not in fixed or (key == "equal_across" and fixed.get("arm_size") != "smallest"):
            continue
        value = fixed[key]
        if value is None or value == "off" or (key == "stages" and value == FULL_STAGES):
            continue
        if isinstance(value, bool):
            if value:
                parts.append(label)
            continue
        parts.append(f"{label} `{value}`")
    return ", ".join(parts)


def _seed_text(domain: dict, evol_instruct: bool) -> str:
    """A domain's seed data, marked where Evol-Instruct adds its breadth method (A.1)."""
    return domain["data"] + (" (+ breadth)" if evol_instruct and domain.get("breadth") else "")


def render() -> str:
    """The protocol table of docs/paper.md (markdown) and its notes."""
    data = load()
    domains = data["domains"]
    lines = [
        "| Preset | Reproduces | Varies | Held fixed | Data → benchmarks | Compare with |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for name, row in data["presets"].items():
        varies = row.get("varies") or {}
        vary = "; ".join(
            f"`{k}`: {', '.join(_as_override(v) for v in vs)}" for k, vs in varies.items()
        )
        if "data" in row:
            data_text = row["data"]
            if "domain" in varies:
                data_text += " → " + ", ".join(
                    b for d in varies["domain"] for b in domains[d]["benchmarks"]
                )
        elif "domain" in varies:
            evol = (row.get("fixed") or {}).get("scenario") == "evol_instruct"
            data_text = "; ".join(
                f"{_seed_text(domains[d], evol)} → {', '.join(domains[d]['benchmarks'])}"
                for d in varies["domain"]
            )
        elif "benchmarks" in row:
            data_text = "→ " + ", ".join(row["benchmarks"])
        else:
            data_text = "-"
        lines.append(
            f"| `{name}` | {row['paper']} | {vary or '-'} | {_fixed_text(row.get('fixed') or {})} "
            f"| {data_text} | {row.get('compare_with', '-')} |"
        )
        if row.get("notes"):
            notes.append(f"- `{name}`: {row['notes']}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def readme_block(readme: str) -> str | None:
    """The protocol table as it stands in a document (between the markers), or None."""
    if README_START not in readme or README_END not in readme:
        return None
    return readme.split(README_START, 1)[1].split(README_END, 1)[0].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reporting.protocol", description=__doc__)
    ap.add_argument("--check", action="store_true", help="compose every preset's jobs and check")
    ap.add_argument("--readme", type=Path, help="rewrite the table in this file (docs/paper.md)")
    args = ap.parse_args(argv)
    if args.readme:
        text = args.readme.read_text(encoding="utf-8")
        if readme_block(text) is None:
            print(f"{args.readme}: no protocol table markers ({README_START})", file=sys.stderr)
            return 1
        head, rest = text.split(README_START, 1)
        tail = rest.split(README_END, 1)[1]
        write_text_atomic(args.readme, f"{head}{README_START}\n{render()}{README_END}{tail}")
        return 0
    if args.check:
        problems = check()
        for p in problems:
            print(p)
        print(f"{len(problems)} difference(s) from the protocol")
        return 1 if problems else 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
