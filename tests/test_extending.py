"""The four contracts, extended the documented way: a new metric, scenario, benchmark and stage each
come in as one Python file (or none, for a benchmark) plus one YAML or setting, outside the
project's folders, and show up everywhere the framework reports without a change to the runner,
from any process. Fake engine: fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from core.stage import STAGES
from evaluation.benchmarks import BENCHMARKS
from evolvers.base import SCENARIOS
from metrics.base import METRICS, filters
from pipeline.runner import Run
from reporting.compare import compare
from tests.conftest import MODELS_DIR, ROOT, compose_cfg, inspect_wandb
from tests.fakes import FakeEngine, use_engine

WORDS_METRIC = '''
"""A test metric: the instruction's length in words."""
from dataclasses import dataclass

from metrics.base import METRICS, Field, Metric, MetricConfig, Stat


@dataclass
class WordsConfig(MetricConfig):
    minimum: int = 1


@METRICS.register()
class WordsMetric(Metric):
    name = "words"
    Config = WordsConfig
    fields = (Field("words", higher_is_better=True, filter="wordiest", label="words"),)
    stats = (Stat("words_mean", higher_is_better=True, headline=True, per_round=True,
                  label="instruction words"),)

    def score(self, set_name, records):
        counts = {r["id"]: len(r["instruction"].split()) for r in records}
        return {i: {"words": n} for i, n in counts.items() if n >= self.cfg.minimum}
'''

SHOUT_SCENARIO = '''
"""A test scenario: each round appends an exclamation and asks the model nothing."""
from dataclasses import dataclass

from evolvers.base import SCENARIOS, Scenario, ScenarioConfig
from evolvers.base import child_id, child_record
from engines.base import Generation


@dataclass
class ShoutConfig(ScenarioConfig):
    suffix: str = "!"


@SCENARIOS.register()
class Shout(Scenario):
    name = "shout"
    Config = ShoutConfig

    def evolve_round(self, parents, round_num, model_name, generate, greedy):
        gen = Generation("", 0, "stop")
        return [
            child_record(p, p["instruction"].upper() + self.cfg.suffix, "shout", round_num,
                         model_name, gen, child_id(p, round_num))
            for p in parents
        ]
'''

WORDCOUNT_STAGE = '''
"""A test stage: the mean length in words of the selected instructions, after the filter."""
from dataclasses import dataclass

from core.fields import Stat
from core.stage import STAGES, Stage, StageResult


@dataclass
class WordCountConfig:
    minimum: int = 1


@STAGES.register()
class WordCount(Stage):
    name = "wordcount"
    order = 47
    Config = WordCountConfig
    needs = ("selected",)
    produces = ("long",)
    stats = (Stat("mean_words", higher_is_better=True, headline=True, label="selected words"),)

    def run(self, ctx, inputs):
        words = [len(r["instruction"].split()) for r in inputs["selected"]]
        long = [n for n in words if n >= self.cfg.minimum]
        mean = sum(words) / len(words) if words else None
        return StageResult(
            artifacts={"long": long},
            summary={"wordcount/mean_words": mean, "wordcount/long": len(long)},
        )
'''

ECHO_BENCHMARK = """
# A test benchmark: repeat a word (lm-eval's own exact_match scores it).
name: echo
task:
  output_type: generate_until
  test_split: test
  doc_to_text: "Repeat the word: {{word}}"
  doc_to_target: "{{word}}"
  generation_kwargs: {until: ["\\n"], do_sample: false, temperature: 0}
  metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
local: {test: test.jsonl}
headlines: {exact_match: "exact_match,none"}
"""


@pytest.fixture
def extension(tmp_path, monkeypatch):
    """A folder on sys.path for the extension's module and a Hydra search path for its YAML;
    whatever the test registers is removed afterwards."""
    code, conf = tmp_path / "ext", tmp_path / "conf"
    code.mkdir()
    conf.mkdir()
    monkeypatch.syspath_prepend(str(code))
    yield code, conf
    METRICS.remove("words")
    SCENARIOS.remove("shout")
    BENCHMARKS.remove("echo")
    STAGES.remove("wordcount")
    for mod in ("ext_words", "ext_shout", "ext_wordcount"):
        sys.modules.pop(mod, None)


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def _cfg(tmp_path, conf, *extra):
    return compose_cfg(
        [
            f"hydra.searchpath=[file://{conf}]",
            "engine=hf",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "data.limit=6",
            *extra,
        ]
    )


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_new_metric_is_one_file_and_one_yaml(tmp_path, monkeypatch, extension):
    code, conf = extension
    _write(code / "ext_words.py", WORDS_METRIC)
    _write(conf / "metrics" / "words.yaml", "words: {enabled: true, impl: ext_words, minimum: 2}")
    use_engine(monkeypatch, FakeEngine())
    cfg = _cfg(
        tmp_path,
        conf,
        "metrics=[words]",
        "rounds=1",
        "filter.name=wordiest",
        "filter.keep_ratio=0.5",
        "stages=[evolve,respond,score,filter,report]",
        "logger=wandb",
    )
    from reporting.tracking import Tracker

    run_dir = tmp_path / "run"
    tracker = Tracker(cfg, run_dir)
    summary = Run(cfg, run_dir, tracker).run()
    tracker.finish(summary)

    assert "wordiest" in filters()  # a filter choice, declared by the metric's field
    evolved = {r["id"]: r for r in _jsonl(run_dir / "round_1" / "evolved.jsonl")}
    rows = _jsonl(run_dir / "round_1" / "scores.jsonl")
    assert len(rows) == 6
    assert all(r["words"] == len(evolved[r["id"]]["instruction"].split()) for r in rows)
    selected = _jsonl(run_dir / "selected.jsonl")
    ranked = sorted(rows, key=lambda r: (-r["words"], r["id"]))
    assert [r["id"] for r in selected] == [r["id"] for r in ranked[:3]]
    assert summary["filter/filter"] == "wordiest"
    mean = sum(r["words"] for r in rows) / len(rows)
    assert summary["round_1/score/words/words_mean"] == pytest.approx(mean, abs=1e-4)
    table = (run_dir / "comparison.md").read_text()
    assert "round_1/score/words/words_mean" in table  # a headline column
    assert (run_dir / "plots" / "words.png").is_file()  # its per-round figure
    wandb = inspect_wandb(run_dir)
    assert json.dumps(wandb["summary"]).count("round_1/score/words/words_mean") >= 1


def test_a_new_scenario_is_one_file_and_one_yaml(tmp_path, monkeypatch, extension):
    code, conf = extension
    _write(code / "ext_shout.py", SHOUT_SCENARIO)
    _write(conf / "scenario" / "shout.yaml", 'name: shout\nimpl: ext_shout\nsuffix: "!!"\n')
    fake = use_engine(monkeypatch, FakeEngine())
    cfg = _cfg(tmp_path, conf, "scenario=shout", "rounds=2", "stages=[evolve,respond,report]")
    summary = Run(cfg, tmp_path / "run").run()
    evolved = _jsonl(tmp_path / "run" / "round_2" / "evolved.jsonl")
    seeds = _jsonl(tmp_path / "run" / "seeds.jsonl")
    assert [r["instruction"] for r in evolved] == [s["instruction"].upper() + "!!!!" for s in seeds]
    assert summary["scenario"] == "shout" and summary["round_2/evolve/parsed"] == 6
    assert summary["round_2/respond/responded"] == 6  # the shared Responder answered them
    assert all("SHOUT" not in p for p in fake.prompts_seen)  # evolution asked the model nothing
    assert "shout" in SCENARIOS.names()


def test_a_new_benchmark_is_one_yaml(tmp_path, monkeypatch, extension):
    _, conf = extension
    bench_dir, data = tmp_path / "benchmarks", tmp_path / "data"
    _write(bench_dir / "echo.yaml", ECHO_BENCHMARK)
    words = ["apple", "river", "stone"]
    _write(data / "echo" / "test.jsonl", "".join(json.dumps({"word": w}) + "\n" for w in words))

    class Echo(FakeEngine):
        def _reply(self, text):
            if "Repeat the word: " not in text:
                return ""
            return text.rsplit("Repeat the word: ", 1)[1].split("<")[0].split()[0]

    use_engine(monkeypatch, Echo())
    cfg = _cfg(
        tmp_path,
        conf,
        "stages=[evaluate,report]",
        "eval.tasks=[echo]",
        f"eval.data_dir={data}",
        f"+eval.benchmark_dirs=[{bench_dir}]",
        "eval.limit=null",
        "eval.pairwise.enabled=false",
    )
    summary = Run(cfg, tmp_path / "run").run()
    assert summary["echo/exact_match"] == 1.0
    assert "echo/exact_match" in (tmp_path / "run" / "comparison.md").read_text()
    assert (tmp_path / "run" / "eval" / "samples_echo.jsonl").is_file()
    compare([tmp_path / "run"], tmp_path / "cmp", quiet=True)
    assert "echo/exact_match" in (tmp_path / "cmp" / "comparison.csv").read_text()


def test_a_new_stage_is_one_file_and_one_setting(tmp_path, monkeypatch, extension):
    """A stage from outside the tree: named in `plugins`, selected in `stages`, its settings its
    own top-level section; its numbers reach summary.json, and a comparison and verdict made by a
    fresh process (which rebuilds the registries from each job's saved config)."""
    code, conf = extension
    _write(code / "ext_wordcount.py", WORDCOUNT_STAGE)
    use_engine(monkeypatch, FakeEngine())
    jobs = []
    from pipeline.runner import check_config

    for model in ("smollm2_135m", "smollm2_360m"):
        for seed in (0, 1):  # the verdict's interval over seeds (the stage has no per-item file)
            over = [
                f"model={model}",
                f"seed={seed}",
                "plugins=[ext_wordcount]",
                "+wordcount.minimum=3",
                "filter=random",
                "filter.keep_ratio=0.5",
                "stages=[evolve,respond,filter,wordcount]",
            ]
            cfg = _cfg(tmp_path, conf, *over)
            check_config(cfg)  # the plugin is imported, its settings checked
            run_dir = tmp_path / "sweep" / f"{model}-{seed}"
            summary = Run(cfg, run_dir).run()
            words = [len(r["instruction"].split()) for r in _jsonl(run_dir / "selected.jsonl")]
            assert summary["wordcount/mean_words"] == pytest.approx(sum(words) / len(words))
            assert summary["wordcount/long"] == sum(n >= 3 for n in words)
            assert "time/wordcount" in summary
            _write(run_dir / ".hydra" / "overrides.yaml", f"- model={model}\n- seed={seed}\n")
            jobs.append(run_dir)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.compare",
            *map(str, jobs),
            "--out",
            str(tmp_path / "cmp"),
            "--pair",
            "model=smollm2_135m",
            "model=smollm2_360m",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wordcount/mean_words" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert "wordcount/mean_words" in (tmp_path / "cmp" / "verdict.md").read_text()


def test_an_unknown_stage_lists_the_registered_ones(tmp_path):
    from core.errors import ConfigError

    cfg = compose_cfg([f"cache_dir={tmp_path}", "stages=[evolve,wordcont]"])
    with pytest.raises(ConfigError, match=r"unknown stage 'wordcont'; valid: .*evolve.*respond"):
        Run(cfg, tmp_path / "run")
