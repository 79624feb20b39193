"""Experiment presets, cluster launchers, and the comparison report."""

import csv
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from core.config import CONF_DIR, options, register_resolvers
from reporting.compare import compare

register_resolvers()


def _compose(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def _jobs(cfg):
    params = cfg.hydra.sweeper.params or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return [
        dict(o.split("=", 1) for o in job)
        for b in BasicSweeper.split_arguments(parsed, None)
        for job in b
    ]


EXPECTED = {
    "table1_evol": [{"model": "llama3.1_8b"}, {"model": "llama3.1_70b"}],
    "table2_qwen2": [{"model": "qwen2_7b"}, {"model": "qwen2_72b"}],
    "table3_autoif": [{"model": "llama3.1_8b"}, {"model": "llama3.1_70b"}],
    "table4_auto_evol": [{"model": "llama3.1_8b"}, {"model": "llama3.1_70b"}],
    "table5_filters": [
        {"model": "llama3.1_8b", "filter": f}
        for f in ("none", "length", "instruction_loss", "ifd", "ic_ifd")
    ],
    "table10_rounds": [
        {"model": m, "rounds": r} for m in ("llama3.1_8b", "llama3.1_70b") for r in ("1", "2", "3")
    ],
    "table11_scaling": [
        {"model": f"qwen2.5_{s}"} for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")
    ],
    "table11_students": [
        {"model": m, "student_size": f"qwen2.5_{s}"}
        for m in ("llama3.1_8b", "llama3.1_70b")
        for s in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b")
    ],
    "family_mistral": [{"model": "mistral_7b"}, {"model": "mixtral_8x7b"}],
    "family_gemma2": [{"model": "gemma2_9b"}, {"model": "gemma2_27b"}],
    "scaling_small": [
        {"model": m}
        for m in ("smollm2_135m", "smollm2_360m", "smollm2_1.7b")
        + ("qwen2.5_0.5b", "qwen2.5_1.5b", "qwen2.5_3b")
    ],
    "win_rates": [
        {"model": "llama3.1_8b", "filter": f, "filter.keep_ratio": k}
        for f in ("ifd", "ic_ifd")
        for k in ("0.05", "0.1", "0.15")
    ],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_expand_to_the_papers_jobs(name):
    cfg = _compose([f"experiment={name}"])
    jobs = _jobs(cfg)
    assert jobs == EXPECTED[name]
    for job in jobs:  # every job composes on its own
        job_cfg = _compose([f"experiment={name}", *(f"{k}={v}" for k, v in job.items())])
        assert job_cfg.model.name in options("model")
        assert job_cfg.generation.evolve.max_tokens == 2048  # paper decoding, not the demo's
        assert job_cfg.train.strategy.startswith("deepspeed") and job_cfg.engine.kind == "vllm"
    if name == "table4_auto_evol":
        assert cfg.scenario.name == "auto_evol_instruct"
    if name == "table3_autoif":
        assert cfg.scenario.name == "autoif" and cfg.respond.model == "qwen2.5_72b"
        assert cfg.scenario.pass_rule == "above" and cfg.scenario.pass_rate == 0.0  # upstream
        assert cfg.scenario.n_samples == 100 and cfg.scenario.k_verifiers == 8
        assert cfg.scenario.queries_per_instruction == 16 and cfg.scenario.equal_size == 5000
        assert cfg.data.name == "tiny" and cfg.filter.name == "none"
    if name == "table1_evol":
        assert cfg.rounds == 1 and cfg.data.name == "alpaca"


# SPEC §9 (the study protocol), as data: what every paper preset holds fixed across its jobs.
SELECTING = {"table5_filters", "win_rates"}  # the only studies that select (SPEC §9)
STUDENTS = {"table11_scaling": "qwen2.5_7b_base", "scaling_small": "qwen2.5_7b_base"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_hold_the_protocol_fixed(name):
    """Base-model students; the whole evolved set except where the paper selects; one IFD scorer
    (a base LM) and one judge that is not an arm, the same for every job of the sweep."""
    jobs = _jobs(_compose([f"experiment={name}"]))
    seen = set()
    for job in jobs:
        cfg = _compose([f"experiment={name}", *(f"{k}={v}" for k, v in job.items())])
        if name == "table11_students":  # the student varies, with its size's SFT settings
            size = job["student_size"].removeprefix("qwen2.5_")
            assert cfg.train.student.name == f"qwen2.5_{size}_base"
            want = {"0.5b": "small", "1.5b": "small", "3b": "mid", "7b": "mid"}.get(size, "lora")
            assert cfg.train.name == f"qwen25_{want}"
        else:
            assert cfg.train.student.name == STUDENTS.get(name, "llama3_8b_base")
        assert cfg.train.student.name.endswith("_base") and cfg.model.name != cfg.train.student.name
        if name not in SELECTING:
            assert cfg.filter.name == "none", job
        scorer, judge = cfg.metrics.ifd.model, cfg.metrics.judge.model
        assert scorer and scorer.endswith("_base") and judge
        assert judge not in {j["model"] for j in jobs}  # the judge is not an arm
        seen.add((scorer, judge))
    assert len(seen) == 1  # the same scorer and judge for every job
    if cfg.train.method == "lora":  # LLaMA-Factory's LoRA, as the paper's training used
        assert cfg.train.lora.r == 8 and cfg.train.lora.dropout == 0.0


def test_every_model_has_a_launcher_with_its_gpus():
    launchers = {}
    for n in (1, 2, 4, 8):
        launcher = _compose([f"hydra/launcher=slurm_{n}gpu"]).hydra.launcher
        assert launcher._target_.endswith("SlurmLauncher") and launcher.gpus_per_node == n
        launchers[n] = launcher
    for name in options("model"):
        tp = _compose([f"model={name}"]).model.tensor_parallel_size
        assert tp in launchers, name
    local = _compose(["hydra/launcher=local"]).hydra.launcher
    assert local._target_.endswith("JoblibLauncher") and local.n_jobs == 2


def _job(root, name, model, size, rounds, values):
    d = root / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- cache_dir=/x\n")
    s = {"status": "ok", "model": model, "model/size_b": size}
    for r in range(1, rounds + 1):
        s[f"round_{r}/evolve/attempted"] = 10
        s[f"round_{r}/evolve/parsed"] = values[r - 1]
        s[f"round_{r}/evolve/failed"] = 10 - values[r - 1]
        s[f"round_{r}/score/judge/complexity_mean"] = 20.0 * r + size
        for lab, p in zip(
            ("very easy", "easy", "medium", "hard", "very hard"), (10, 20, 30, 25, 15)
        ):
            s[f"round_{r}/score/judge/difficulty/percent/{lab}"] = p
        (d / f"round_{r}").mkdir()
        with (d / f"round_{r}" / "scores.jsonl").open("w") as f:
            for i in range(8):
                f.write(
                    json.dumps(
                        {
                            "id": f"s{i}",
                            "nn_l2sq": 0.1 * i + size / 100,
                            "top1_probs": [0.5 + 0.05 * i, 0.9],
                        }
                    )
                    + "\n"
                )
    (d / "summary.json").write_text(json.dumps(s))


def test_compare_table_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    _job(sweep, "0", "small", 8.0, 2, [9, 8])
    _job(sweep, "1", "large", 70.0, 2, [7, 6])
    compare([sweep])
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert [r["model"] for r in rows] == ["small", "large"]
    assert list(rows[0])[:3] == ["job", "model", "status"]  # swept keys lead; paths dropped
    md = (sweep / "comparison.md").read_text()
    small = next(line for line in md.splitlines() if line.startswith("| 0 |"))
    large = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "**9**" in small and "**1**" in small  # most parsed, fewest failed (round 1)
    assert "**90**" in large and "**70**" not in large  # highest complexity; size is no score
    report = (sweep / "report.md").read_text()
    for png in ("difficulty", "complexity", "nn_l2sq", "top1_probs", "scaling"):
        assert (sweep / "plots" / f"{png}.png").stat().st_size > 1000
        assert f"plots/{png}.png" in report
    assert "Not plotted (no data in these jobs): " in report and "Benchmarks" in report


def test_wandb_sweep_file_drives_run_py_with_hydra_overrides():
    import itertools

    import yaml

    from core.config import CONF_DIR

    spec = yaml.safe_load((CONF_DIR.parent / "sweeps" / "wandb_evolver_size.yaml").read_text())
    assert spec["program"] == "run.py" and "${args_no_hyphens}" in spec["command"]
    params = spec["parameters"]
    grid = [
        dict(zip(params, combo))
        for combo in itertools.product(
            *[p.get("values", [p.get("value")]) for p in params.values()]
        )
    ]
    assert len(grid) == 8
    for point in grid:  # what the agent would pass composes
        _compose([f"{k}={v}" for k, v in point.items()])


def test_report_plots_benchmarks_across_rounds_and_the_pairwise_judge(tmp_path):
    sweep = tmp_path / "sweep"
    for k, (model, size, rounds) in enumerate(
        [("small", 8.0, 1), ("small", 8.0, 2), ("large", 70.0, 1), ("large", 70.0, 2)]
    ):
        _job(sweep, str(k), model, size, rounds, [9, 8][:rounds])
        d = sweep / str(k)
        (d / ".hydra" / "overrides.yaml").write_text(f"- model={model}\n- rounds={rounds}\n")
        s = json.loads((d / "summary.json").read_text())
        s |= {
            "rounds": rounds,
            "ifeval/prompt_strict": 0.3 + 0.01 * rounds + (0.02 if model == "small" else 0),
            "gsm8k/strict": 0.1 * rounds,
            "judge/win": 3 + k,
            "judge/tie": 2,
            "judge/lose": 1,
        }
        (d / "summary.json").write_text(json.dumps(s))
    compare([sweep])
    report = (sweep / "report.md").read_text()
    for png in ("benchmarks", "benchmarks_rounds", "win_tie_lose"):
        assert (sweep / "plots" / f"{png}.png").stat().st_size > 1000
        assert f"plots/{png}.png" in report
    rows = list(csv.DictReader((sweep / "comparison.csv").open()))
    assert [r["ifeval/prompt_strict"] for r in rows][:2] == ["0.33", "0.34"]
    md = (sweep / "comparison.md").read_text()
    best = next(line for line in md.splitlines() if line.startswith("| 1 |"))
    assert "**0.34**" in best  # the best IFEval score of the sweep is marked


def test_paper_presets_evaluate_with_the_papers_settings():
    for name in ("table1_evol", "table3_autoif", "table5_filters", "table11_scaling"):
        cfg = _compose([f"experiment={name}"])
        assert cfg.eval.name == "paper" and cfg.eval.limit is None, name
        assert list(cfg.eval.tasks) == ["ifeval", "gsm8k", "math", "humaneval", "mbpp"]
    win = _compose(["experiment=win_rates"]).eval.pairwise
    assert win.enabled and win.judge == "llama3.1_70b"
    assert _compose(["experiment=demo"]).eval.data_dir == "bundled"  # the CPU demo: fixtures
