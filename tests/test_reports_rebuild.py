"""Reports rebuild each job's registries from its saved config: out-of-tree metrics (`impl`),
stages (`plugins`), scenarios (`impl`) and benchmarks (`eval.benchmark_dirs`) keep their
headline columns, CIs and verdict rows in a process that never ran the job (`python -m
pipeline.compare`, the end of a multirun under joblib or SLURM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.errors import ConfigError
from core.extensions import extension_modules, load_extensions
from tests.conftest import ROOT

LENGTH_METRIC = """
from dataclasses import dataclass

from metrics.base import METRICS, Field, Metric, MetricConfig, Stat


@METRICS.register()
class LengthMetric(Metric):
    name = "lengthy"
    fields = (Field("chars", higher_is_better=True),)
    stats = (Stat("chars_mean", higher_is_better=True, headline=True, of="chars"),)

    def score(self, set_name, records):
        return {r["id"]: {"chars": len(r["instruction"])} for r in records}
"""

SPAN_STAGE = """
from core.fields import Stat
from core.stage import STAGES, Stage, StageResult


@STAGES.register()
class Span(Stage):
    name = "span"
    order = 48
    stats = (Stat("mean_span", higher_is_better=False, headline=True, of="span"),)

    def run(self, ctx, inputs):
        return StageResult()
"""

QUIET_SCENARIO = """
from evolvers.base import SCENARIOS, Scenario


@SCENARIOS.register()
class Quiet(Scenario):
    name = "quiet"

    def evolve_round(self, parents, round_num, model_name, generate, greedy):
        return []
"""

ECHO_BENCHMARK = """
name: echo2
task: {output_type: generate_until, test_split: test, doc_to_text: "{{word}}",
       doc_to_target: "{{word}}",
       metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]}
local: {test: test.jsonl}
headlines: {exact_match: "exact_match,none"}
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _jsonl(path: Path, rows: list[dict]) -> None:
    _write(path, "".join(json.dumps(r) + "\n" for r in rows))


def _job(folder: Path, arm: str, bench_dir: Path, rng, better: bool) -> Path:
    """A finished job as the runner leaves it, with every kind of out-of-tree number; its saved
    config (config.yaml) names the modules and the benchmark folder."""
    n = 60
    echo = (rng.random(n) < (0.9 if better else 0.2)).astype(float)
    chars = rng.normal(80 if better else 40, 5, n)
    span = rng.normal(3 if better else 9, 1, n)
    config = {
        "plugins": ["ext_span"],
        "metrics": {"lengthy": {"enabled": True, "impl": "ext_lengthy"}},
        "scenario": {"name": "quiet", "impl": "ext_quiet"},
        "eval": {"benchmark_dirs": [str(bench_dir)]},
    }
    _write(folder / "config.yaml", yaml.safe_dump(config))
    _write(folder / ".hydra" / "overrides.yaml", f"- model={arm}\n")
    _jsonl(
        folder / "eval" / "samples_echo2.jsonl",
        [{"doc_id": i, "filter": "none", "exact_match": v} for i, v in enumerate(echo)],
    )
    _jsonl(
        folder / "round_1" / "scores.jsonl",
        [{"id": f"r{i}", "chars": c} for i, c in enumerate(chars)],
    )
    _jsonl(
        folder / "span" / "items.jsonl", [{"id": f"r{i}", "span": s} for i, s in enumerate(span)]
    )
    summary = {
        "status": "ok",
        "model": arm,
        "scenario": "quiet",
        "rounds": 1,
        "echo2/exact_match": float(echo.mean()),
        "round_1/score/lengthy/chars_mean": float(chars.mean()),
        "span/mean_span": float(span.mean()),
    }
    _write(folder / "summary.json", json.dumps(summary))
    return folder


@pytest.fixture
def ext(tmp_path):
    code = tmp_path / "ext"
    _write(code / "ext_lengthy.py", LENGTH_METRIC)
    _write(code / "ext_span.py", SPAN_STAGE)
    _write(code / "ext_quiet.py", QUIET_SCENARIO)
    bench = tmp_path / "benchmarks"
    _write(bench / "echo2.yaml", ECHO_BENCHMARK)
    return code, bench


def test_a_fresh_process_compares_out_of_tree_numbers(tmp_path, ext):
    code, bench = ext
    rng = np.random.default_rng(0)
    sweep = tmp_path / "sweep"
    _job(sweep / "0", "a", bench, rng, better=True)
    _job(sweep / "1", "b", bench, rng, better=False)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.compare", str(sweep), "--pair", "model=a", "model=b"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (sweep / "comparison.md").read_text()
    for key in ("echo2/exact_match", "round_1/score/lengthy/chars_mean", "span/mean_span"):
        assert key in table, table
    rows = {
        r.split("|")[1].strip(): r
        for r in (sweep / "verdict.md").read_text().splitlines()
        if r.startswith("| ") and "/" in r.split("|")[1]
    }
    assert "A better" in rows["echo2/exact_match"], rows  # paired, higher is better
    assert "A better" in rows["round_1/score/lengthy/chars_mean"], rows
    assert "A better" in rows["span/mean_span"], rows  # lower is better: A's spans are shorter


def test_a_job_whose_module_is_gone_is_still_compared(tmp_path, ext, caplog):
    """A module the report cannot import (not on this machine's path) is a warning; the
    comparison goes on with what it knows."""
    from reporting.compare import compare

    _, bench = ext
    rng = np.random.default_rng(1)
    job = _job(tmp_path / "sweep" / "0", "a", bench, rng, better=True)
    config = yaml.safe_load((job / "config.yaml").read_text())
    config["plugins"] = ["ext_not_installed_anywhere"]
    config["metrics"] = {}
    config["scenario"] = {}
    (job / "config.yaml").write_text(yaml.safe_dump(config))
    compare([job], tmp_path / "cmp", quiet=True)
    assert "ext_not_installed_anywhere" in caplog.text
    assert "echo2/exact_match" in (tmp_path / "cmp" / "comparison.md").read_text()


def test_the_hydra_config_is_the_fallback_and_relative_folders_follow_the_launch(tmp_path, ext):
    """A job without config.yaml (an older run): `.hydra/config.yaml`, whose relative
    benchmark folder is relative to where the job was started."""
    from reporting.jobs import job_registries

    _, bench = ext
    job = tmp_path / "job"
    _write(
        job / ".hydra" / "config.yaml", yaml.safe_dump({"eval": {"benchmark_dirs": ["benchmarks"]}})
    )
    _write(
        job / ".hydra" / "hydra.yaml",
        yaml.safe_dump({"hydra": {"runtime": {"cwd": str(tmp_path)}}}),
    )
    assert "echo2" in job_registries(job)
    assert "echo2" not in job_registries(tmp_path / "no-config")


def test_load_extensions_imports_what_a_config_names_once(tmp_path, ext, monkeypatch):
    from core.stage import STAGES
    from evolvers.base import SCENARIOS
    from metrics.base import METRICS

    code, _ = ext
    monkeypatch.syspath_prepend(str(code))
    cfg = {
        "plugins": ["ext_span"],
        "metrics": {"lengthy": {"enabled": True, "impl": "ext_lengthy"}, "ifd": {"enabled": True}},
        "scenario": {"name": "quiet", "impl": "ext_quiet"},
    }
    assert extension_modules(cfg) == [
        ("plugins[0]", "ext_span"),
        ("metrics.lengthy.impl", "ext_lengthy"),
        ("scenario.impl", "ext_quiet"),
    ]
    try:
        load_extensions(cfg)
        load_extensions(cfg)  # idempotent: nothing registers twice
        assert "span" in STAGES and "lengthy" in METRICS and "quiet" in SCENARIOS
    finally:
        STAGES.remove("span")
        METRICS.remove("lengthy")
        SCENARIOS.remove("quiet")
        for mod in ("ext_span", "ext_lengthy", "ext_quiet"):
            sys.modules.pop(mod, None)
    with pytest.raises(ConfigError, match=r"plugins\[0\]: cannot import 'no_such_module_x'"):
        load_extensions({"plugins": ["no_such_module_x"]})
    with pytest.raises(ConfigError, match="plugins: a list of modules"):
        load_extensions({"plugins": {"a": 1}})


def test_plugins_is_a_top_level_key_defaulting_to_none():
    from tests.conftest import compose_cfg

    assert list(compose_cfg().plugins) == []
