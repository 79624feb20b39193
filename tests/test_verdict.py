"""Per-item data -> CIs in summary.json, the verdict of two arms, significance-only bolding, seeds
as a sweep axis, and the dataset export (reporting.items, reporting.verdict, pipeline.export)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from tests.conftest import ROOT


def _job(
    sweep: Path, num: int, overrides: list[str], gsm: list[int], ifd: list[float], inst=None
) -> Path:
    """A finished job as the runner leaves it: summary.json, lm-eval samples, scores.jsonl."""
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (d / "eval").mkdir()
    rows = []
    for i, v in enumerate(gsm):
        for filt in ("strict-match", "flexible-extract"):
            rows.append({"doc_id": i, "filter": filt, "exact_match": float(v), "resps": [["x"]]})
    (d / "eval" / "samples_gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "status": "ok",
        "model": "m",
        "scenario": "evol_instruct",
        "rounds": 1,
        "gsm8k/strict": float(np.mean(gsm)),
        "gsm8k/flexible": float(np.mean(gsm)),
        "round_1/score/ifd/ifd_mean": float(np.mean(ifd)),
        "filter/kept": 3,
    }
    if inst is not None:  # IFEval: prompt-level booleans, instruction-level lists
        rows = [
            {
                "doc_id": i,
                "filter": "none",
                "prompt_level_strict_acc": all(x),
                "inst_level_strict_acc": x,
            }
            for i, x in enumerate(inst)
        ]
        (d / "eval" / "samples_ifeval.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
        summary["ifeval/prompt_strict"] = float(np.mean([all(x) for x in inst]))
        summary["ifeval/inst_strict"] = sum(map(sum, inst)) / sum(map(len, inst))
    (d / "round_1").mkdir()
    (d / "round_1" / "scores.jsonl").write_text(
        "".join(json.dumps({"id": f"s{i}-r1", "ifd": v}) + "\n" for i, v in enumerate(ifd))
    )
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def _arms_sweep(tmp_path: Path, seeds=(0, 1)) -> Path:
    """Arm a solves 80% of 60 GSM8K items, arm b 20%; both score the same IFD spread."""
    rng = np.random.default_rng(0)
    sweep = tmp_path / "sweep"
    n = 0
    for model, p in (("a", 0.8), ("b", 0.2)):
        for seed in seeds:
            gsm = (rng.random(60) < p).astype(int).tolist()
            ifd = rng.normal(0.6, 0.2, 40).tolist()
            _job(sweep, n, [f"model={model}", f"seed={seed}"], gsm, ifd)
            n += 1
    return sweep


def test_intervals_sit_beside_each_number_and_reproduce_it(tmp_path):
    from reporting.items import intervals

    inst = [[True, False], [True], [False, False, True], [True, True]]
    d = _job(tmp_path, 0, ["model=a"], [1, 0, 1, 1], [0.2, 0.4, 0.9], inst=inst)
    summary = json.loads((d / "summary.json").read_text())
    ci = intervals(d, summary)
    for key in (
        "gsm8k/strict",
        "gsm8k/flexible",
        "ifeval/prompt_strict",
        "ifeval/inst_strict",
        "round_1/score/ifd/ifd_mean",
    ):
        assert ci[f"{key}_ci_low"] <= summary[key] <= ci[f"{key}_ci_high"], key
        assert ci[f"{key}_ci_low"] < ci[f"{key}_ci_high"], key
    assert "filter/kept_ci_low" not in ci  # no per-item data, no interval
    # A summary whose number the files do not give back (another run's files): no interval.
    summary["gsm8k/strict"] = 0.1
    assert "gsm8k/strict_ci_low" not in intervals(d, summary)


def test_the_judges_win_rate_gets_a_wilson_interval(tmp_path):
    from reporting.items import intervals
    from reporting.stats import wilson

    d = _job(tmp_path, 0, ["model=a"], [1, 0], [0.5, 0.5])
    outcomes = ["win"] * 6 + ["lose"] * 2 + ["tie"] * 2 + ["unparseable"] * 3
    (d / "eval" / "pairwise.jsonl").write_text(
        "".join(json.dumps({"id": f"p{i}", "outcome": o}) + "\n" for i, o in enumerate(outcomes))
    )
    ci = intervals(d, {"judge/win_rate": 0.6})
    expected = wilson(6, 10)  # unparseable items are not trials
    assert (ci["judge/win_rate_ci_low"], ci["judge/win_rate_ci_high"]) == pytest.approx(
        (expected.low, expected.high), abs=1e-6
    )


def test_verdict_names_the_better_arm_only_where_the_data_can_tell(tmp_path):
    sweep = _arms_sweep(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.compare", str(sweep), "--pair", "model=a", "model=b"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| gsm8k/strict |" in res.stdout  # the verdict is printed
    rows = {r["metric"]: r for r in csv.DictReader((sweep / "verdict.csv").open())}
    assert set(rows) == {"gsm8k/strict", "gsm8k/flexible", "round_1/score/ifd/ifd_mean"}
    gsm = rows["gsm8k/strict"]
    assert gsm["verdict"] == "A better" and float(gsm["p_holm"]) < 0.01
    assert gsm["test"] == "two-way bootstrap"  # two seeds per arm: seeds in the test too
    assert (gsm["seeds_a"], gsm["seeds_b"], gsm["items"]) == ("2", "2", "60")
    assert float(gsm["diff_ci_low"]) > 0.3 and float(gsm["diff"]) < float(gsm["diff_ci_high"])
    ifd = rows["round_1/score/ifd/ifd_mean"]
    assert ifd["verdict"] == "no detectable difference at 95%" and ifd["test"] == "permutation"
    assert float(ifd["diff_ci_low"]) < 0 < float(ifd["diff_ci_high"])
    md = (sweep / "verdict.md").read_text()
    assert "A: `model=a` · B: `model=b`" in md and "A − B [95% CI]" in md
    assert (sweep / "plots" / "forest_verdict.png").stat().st_size > 1000
    # comparison.md: the seeds as one row per arm (mean ± sd), bold only where significant.
    table = (sweep / "comparison.md").read_text()
    over = table.split("## Per job")[0]
    a_row = next(line for line in over.splitlines() if line.startswith("| a | 2 |"))
    b_row = next(line for line in over.splitlines() if line.startswith("| b | 2 |"))
    assert a_row.count("**") == 4 and "±" in a_row  # both GSM8K columns, not IFD
    assert "**" not in b_row
    assert "forest_verdict.png" in (sweep / "report.md").read_text()


def test_no_bold_without_a_significant_difference(tmp_path):
    from reporting.compare import compare

    sweep = tmp_path / "sweep"
    _job(sweep, 0, ["model=a"], [1, 1, 0, 1], [0.5, 0.6, 0.7])
    _job(sweep, 1, ["model=b"], [1, 0, 0, 1], [0.5, 0.6, 0.8])
    compare([sweep], quiet=True)
    table = (sweep / "comparison.md").read_text()
    assert "**" not in table.split("\n\n")[0]  # 0.75 vs 0.5 on 4 items: noise
    assert "significantly best" in table


def test_contexts_are_compared_apart(tmp_path):
    """A model × filter sweep: --pair model=a model=b gives one verdict per filter."""
    from reporting.verdict import verdict

    sweep, n, rng = tmp_path / "sweep", 0, np.random.default_rng(1)
    for filt in ("ifd", "ic_ifd"):
        for model, p in (("a", 0.7), ("b", 0.3)):
            gsm = (rng.random(40) < p).astype(int).tolist()
            _job(sweep, n, [f"model={model}", f"filter={filt}"], gsm, rng.random(20).tolist())
            n += 1
    rows = verdict([sweep], "model=a", "model=b")
    assert {r.context for r in rows} == {"filter=ifd", "filter=ic_ifd"}
    assert all(r.seeds_a == r.seeds_b == 1 for r in rows)
    assert {r.test for r in rows if r.metric.startswith("gsm8k")} == {"McNemar exact"}
    assert "## filter=ic_ifd" in (sweep / "verdict.md").read_text()


def test_an_arm_that_matches_no_job_lists_what_there_is(tmp_path):
    from reporting.verdict import verdict

    sweep = _arms_sweep(tmp_path, seeds=(0,))
    with pytest.raises(ConfigError, match=r"arm B \(model=c\) matches no job.*model=a, model=b"):
        verdict([sweep], "model=a", "model=c")
    with pytest.raises(ConfigError, match="key=value"):
        verdict([sweep], "model=a", "b")
    res = subprocess.run(
        [sys.executable, "-m", "pipeline.compare", str(sweep), "--pair", "model=a", "model=zz"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0 and "matches no job" in res.stderr and "Traceback" not in res.stderr


def test_seeds_n_is_a_seed_sweep():
    from core.config import expand_seeds
    from pipeline.arms import parse_overrides

    argv = expand_seeds(["model=a,b", "seeds=3"])
    assert argv == ["-m", "model=a,b", "seed=range(3)"]
    assert parse_overrides(argv[1:])["seed"] == ["0", "1", "2"]
    assert expand_seeds(["-m", "seeds=2"]) == ["-m", "seed=range(2)"]
    assert expand_seeds(["rounds=2"]) == ["rounds=2"]
    with pytest.raises(SystemExit, match="seeds=N or seed"):
        expand_seeds(["seeds=2", "seed=1"])
    with pytest.raises(SystemExit, match="number of seeds"):
        expand_seeds(["seeds=x"])


def test_compare_pair_setting_is_checked():
    from core.config import typed_section
    from core.schemas import CompareConfig

    assert typed_section(CompareConfig, {"pair": ["model=a", "model=b"]}, "compare").pair
    with pytest.raises(ConfigError, match="compare.pair"):
        typed_section(CompareConfig, {"pair": ["model=a"]}, "compare")


def _run_dir(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(
        "model: {name: smollm2_135m}\nscenario: {name: evol_instruct}\nrounds: 1\nseed: 0\n"
        "filter: {name: ic_ifd, keep_ratio: 0.5}\ncache_dir: /somewhere\n"
    )
    recs = [
        {
            "id": f"s{i}-r1",
            "instruction": f"Do task {i}",
            "input": "",
            "output": f"Answer {i}",
            "meta": {"round": 1, "method": "deepen", "source_id": f"s{i}", "model": "m", "x": [i]},
        }
        for i in range(4)
    ]
    (d / "round_1").mkdir()
    (d / "round_1" / "responded.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (d / "selected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs[:2]))
    scores = [{"id": r["id"], "ifd": 0.5 + i / 10, "difficulty": None} for i, r in enumerate(recs)]
    scores[1]["difficulty"] = "hard"
    (d / "round_1" / "scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    summary = {"model": "smollm2_135m", "scenario": "evol_instruct", "rounds": 1}
    summary["round_1/score/ifd/ifd_mean"] = 0.65
    summary |= {
        "round_1/score/ifd/ifd_mean_ci_low": 0.55,
        "round_1/score/ifd/ifd_mean_ci_high": 0.75,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_export_loads_with_datasets_and_llama_factory(tmp_path):
    import datasets

    from pipeline.export import main

    d = _run_dir(tmp_path)
    main([str(d)])
    folder = d / "dataset"
    ds = datasets.load_from_disk(str(folder))
    assert set(ds) == {"selected", "round_1"}
    assert ds["selected"].num_rows == 2 and ds["round_1"].num_rows == 4
    row = ds["round_1"][1]
    assert row["instruction"] == "Do task 1" and row["score_ifd"] == pytest.approx(0.6)
    assert row["score_difficulty"] == "hard" and json.loads(row["meta"])["x"] == [1]
    # The Parquet files the Hub serves, as the card's configs name them.
    parquet = datasets.load_dataset(
        "parquet", data_files={"selected": str(folder / "data/selected-00000-of-00001.parquet")}
    )
    assert parquet["selected"]["id"] == ["s0-r1", "s1-r1"]
    card = (folder / "README.md").read_text()
    for text in ("smollm2_135m", "evol_instruct", "ic_ifd", "config hash", "[0.55, 0.75]"):
        assert text in card
    assert "/somewhere" not in card
    # LLaMA-Factory's dataset_info.json: an alpaca entry per split over a file that exists.
    info = json.loads((folder / "dataset_info.json").read_text())
    entry = info["smollm2_135m_evol_instruct_selected"]
    assert entry["formatting"] == "alpaca"
    assert entry["columns"] == {"prompt": "instruction", "query": "input", "response": "output"}
    assert (folder / entry["file_name"]).is_file()


def test_push_without_a_token_says_what_to_do(tmp_path, monkeypatch):
    from pipeline.export import export_dataset, push

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no saved login
    folder = export_dataset(_run_dir(tmp_path))
    with pytest.raises(ConfigError, match="no Hugging Face token.*HF_TOKEN.*huggingface-cli login"):
        push(folder, "org/name")


def test_push_uploads_the_card_and_parquet_only(tmp_path, monkeypatch):
    import huggingface_hub

    from pipeline.export import export_dataset, push

    calls = []

    class FakeApi:  # the Hub is not reachable from tests; the calls are what matters
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload", kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    folder = export_dataset(_run_dir(tmp_path))
    url = push(folder, "org/name", private=True, token="hf_x")
    assert url.endswith("datasets/org/name")
    assert calls[1] == (
        "create",
        "org/name",
        {"repo_type": "dataset", "private": True, "exist_ok": True},
    )
    upload = calls[2][1]
    assert upload["allow_patterns"] == ["README.md", "data/*.parquet"]
    assert Path(upload["folder_path"]) == folder


@pytest.mark.slow
@pytest.mark.parametrize("seeds", ["0", pytest.param("0,1", marks=pytest.mark.heavy)])
def test_a_real_two_arm_sweep_gives_a_verdict_and_datasets(tmp_path, seeds):
    """`python run.py -m filter=ic_ifd,ifd seed=0` (and `seed=0,1` in the heavy tier: the seeds
    pooled, apart and in the "Over seeds" table) on the bundled model, with compare.pair:
    verdict.md names a difference, its CI and a p-value for every benchmark headline (IFEval's
    ratios, GSM8K's exact matches, HumanEval's sandboxed programs) and data metric;
    summary.json carries CIs; each job's dataset folder loads; each job is a finished offline W&B
    run of the sweep's group (W&B's default mode), and the verdict table is one more run there."""
    import os

    import datasets

    from tests.conftest import MODELS_DIR, inspect_wandb, run_cli

    sweep = tmp_path / "sweep"
    res = run_cli(
        [
            "-m",
            "filter=ic_ifd,ifd",
            f"seed={seeds}",
            'compare.pair=["filter=ic_ifd","filter=ifd"]',
            "engine=hf",
            "data.limit=3",
            "rounds=1",
            "filter.keep_ratio=0.5",
            "train.max_steps=1",
            "eval.tasks=[ifeval,gsm8k,humaneval]",  # a ratio, an exact match, sandboxed code
            "eval.limit=1",
            "eval.max_gen_toks=24",
            "eval.pairwise.enabled=false",
            "generation.evolve.max_tokens=32",
            "generation.greedy.max_tokens=32",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "logger=wandb",
            f"hydra.sweep.dir={sweep}",
        ],
        env={k: v for k, v in os.environ.items() if k != "WANDB_MODE"},
        timeout=1200,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    rows = list(csv.DictReader((sweep / "verdict.csv").open()))
    metrics = {r["metric"] for r in rows}
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    from evaluation.benchmarks import BENCHMARKS
    from metrics.base import mean_stats

    n_seeds = len(seeds.split(","))
    names = [str(n) for n in range(2 * n_seeds)]
    jobs = [json.loads((sweep / n / "summary.json").read_text()) for n in names]

    def everywhere(keys):  # a number in every job (a judge whose every reply failed has none)
        return {k for k in keys if all(isinstance(j.get(k), int | float) for j in jobs)}

    benchmarks = everywhere(BENCHMARKS.headline_keys())
    data = everywhere(f"round_1/score/{m}/{s.key}" for m, s in mean_stats())
    headlines = {k for k in BENCHMARKS.headline_keys() if k.split("/")[0] in ("ifeval", "gsm8k")}
    assert benchmarks == headlines | {"humaneval/pass@1"} and len(data) >= 6
    assert benchmarks | data <= metrics
    for r in rows:
        assert r["seeds_a"] == r["seeds_b"] == str(n_seeds)
        assert float(r["diff_ci_low"]) <= float(r["diff"]) <= float(r["diff_ci_high"])
        assert 0 < float(r["p"]) <= 1 and float(r["p"]) <= float(r["p_holm"]) <= 1
        assert r["verdict"] in ("A better", "B better", "no detectable difference at 95%")
    md = (sweep / "verdict.md").read_text()
    assert "A: `filter=ic_ifd` · B: `filter=ifd`" in md and "p (Holm)" in md
    for key in benchmarks | data:  # every number with per-item data has its interval
        assert summary[f"{key}_ci_low"] <= summary[key] <= summary[f"{key}_ci_high"], key
    # The two filters of one seed shared its evolved set; seed 0 and seed 1 evolved apart.
    evolved = {}
    for n in names:
        overrides = (sweep / n / ".hydra" / "overrides.yaml").read_text()
        seed = "seed=1" in overrides
        evolved.setdefault(seed, []).append((sweep / n / "round_1" / "evolved.jsonl").read_text())
    assert all(a == b for a, b in evolved.values()) and len(evolved) == n_seeds
    if n_seeds == 2:
        assert evolved[False][0] != evolved[True][0]
    # Each job's sets as a dataset folder: datasets and LLaMA-Factory read it.
    folder = sweep / "0" / "dataset"
    ds = datasets.load_from_disk(str(folder))
    assert ds["selected"].num_rows == summary["filter/kept"]
    info = json.loads((folder / "dataset_info.json").read_text())
    assert all((folder / e["file_name"]).is_file() for e in info.values())
    # W&B: a finished offline run per job, named by its overrides (no machine paths), with the
    # resolved config, what `auto` resolved to, per-round metrics and sample tables, and the
    # summary with its intervals; the verdict's table in one more run of the same group.
    from reporting.tracking import sweep_group

    group = sweep_group(str(sweep)).encode()

    def in_group(run_dir: Path) -> bool:  # W&B's reader does not show the group: the run record
        (record,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
        return group in record.read_bytes()

    for n in names:
        s = inspect_wandb(sweep / n)
        info, job = s["summary"], json.loads((sweep / n / "summary.json").read_text())
        assert info["state"] == "finished" and info["exit_code"] == 0
        assert info["config"]["model"]["name"] == "smollm2_135m" and info["config"]["rounds"] == 1
        assert "filter=" in info["name"] and "cache_dir" not in info["name"]
        assert info["config"]["hardware"]["engine_dtype"] == job["hardware/engine_dtype"]
        assert info["config"]["hardware"]["cpu_bf16"] == job["hardware/cpu_bf16"]
        for key in ("round_1/evolve/parsed", "engine/prompts", "status", "gsm8k/strict_ci_high"):
            assert info["summary"][key] == job[key]
        assert info["summary"]["round"] == 1  # per-round metrics, the round as their step
        assert '"evolve/attempted"' in s["history"] and "samples/round_1" in s["history"]
        assert in_group(sweep / n)
    verdict_run = inspect_wandb(sweep)["summary"]
    assert verdict_run["name"] == "verdict" and verdict_run["state"] == "finished"
    assert verdict_run["summary"]["verdict"]["_type"] == "table-file"
    assert verdict_run["summary"]["verdict"]["nrows"] == len(rows)
    assert in_group(sweep)  # one sweep, one group
    # The multirun's comparison (hydra callback): the seeds as one row per arm, then per job.
    md = (sweep / "comparison.md").read_text()
    if n_seeds == 2:
        assert md.startswith("## Over seeds") and "| filter | seeds |" in md and "## Per job" in md
    else:
        assert md.startswith("| job | filter | status |") and "Over seeds" not in md
    assert "verdict.md" in (sweep / "report.md").read_text()


def test_a_nan_item_is_left_out(tmp_path):
    from reporting.items import data_items

    d = _job(tmp_path, 0, ["model=a"], [1, 0], [0.5, float("nan"), 0.7])
    items = data_items(d)["round_1/score/ifd/ifd_mean"]
    assert sorted(items) == ["s0-r1", "s2-r1"]


def test_a_verdict_that_cannot_be_made_still_leaves_the_report(tmp_path):
    from reporting.compare import compare

    sweep = _arms_sweep(tmp_path, seeds=(0,))
    with pytest.raises(ConfigError, match="matches no job"):
        compare([sweep], quiet=True, pair=("model=a", "model=zz"))
    report = (sweep / "report.md").read_text()
    assert "## Verdict" in report and "Not written: arm B" in report
    assert (sweep / "comparison.md").is_file()


def test_jobs_without_a_seed_override_are_never_grouped_as_seeds(tmp_path):
    from reporting.compare import compare

    sweep = tmp_path / "runs"
    _job(sweep, 0, [], [1, 0, 1], [0.5, 0.6])
    _job(sweep, 1, [], [0, 0, 1], [0.5, 0.7])
    compare([sweep], quiet=True)
    assert "Over seeds" not in (sweep / "comparison.md").read_text()


def test_bold_needs_the_items_to_agree_with_the_means(tmp_path):
    """A summary whose 'best' value its own items contradict (files of another run) is not
    bold, even where the items differ significantly the other way."""
    from reporting.verdict import significant_best

    sweep = tmp_path / "sweep"
    a = _job(sweep, 0, ["model=a"], [0] * 40, [0.5, 0.6])
    b = _job(sweep, 1, ["model=b"], [1] * 40, [0.5, 0.6])
    from reporting.compare import load_job

    jobs = [load_job(a), load_job(b)]
    assert significant_best([[jobs[0]], [jobs[1]]], "gsm8k/strict", [1.0, 0.0]) is None
    assert significant_best([[jobs[0]], [jobs[1]]], "gsm8k/strict", [0.0, 1.0]) == 1


def test_every_split_shares_one_schema_as_the_hub_loads_them(tmp_path):
    """A score that is None in every selected record but text in round 1 (filter=ifd's
    ifd_reason): the Parquet files must load together, as the Hub's loader reads them."""
    import datasets

    from pipeline.export import export_dataset

    d = _run_dir(tmp_path)
    rows = [json.loads(x) for x in (d / "round_1" / "scores.jsonl").read_text().splitlines()]
    for i, row in enumerate(rows):
        row["ifd_reason"] = None if i < 2 else "no_output"
    (d / "round_1" / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = export_dataset(d)
    files = {
        s: str(folder / "data" / f"{s}-00000-of-00001.parquet") for s in ("selected", "round_1")
    }
    loaded = datasets.load_dataset("parquet", data_files=files)
    assert loaded["round_1"]["score_ifd_reason"] == [None, None, "no_output", "no_output"]
    assert loaded["selected"].features == loaded["round_1"].features
