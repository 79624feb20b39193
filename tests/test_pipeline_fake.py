"""The pipeline's bookkeeping with a fake engine: files, chaining, failures, stages, resume."""

import json

import pytest

from pipeline.runner import Run, run_job
from tests.conftest import MODELS_DIR, compose_cfg
from tests.fakes import FakeEngine, use_engine


@pytest.fixture
def fake(monkeypatch):
    return use_engine(monkeypatch, FakeEngine())


def _cfg(tmp_path, *extra):
    # Scoring needs real models (tests/test_scoring.py); these tests cover generation and files.
    return compose_cfg(
        [
            "engine=hf",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            "data.limit=6",
            "stages=[evolve,respond,report]",
            *extra,
        ]
    )


def _jsonl(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rounds_chain_and_failures_stop_their_lineage(tmp_path, fake):
    # s1's first evolution fails (empty), s2's second one echoes its parent (unchanged).
    fake.fail_when = {"Explain why the sky appears blue during the day.": "#Rewritten Prompt#:"}
    run_dir = tmp_path / "run"
    summary = Run(_cfg(tmp_path, "rounds=3"), run_dir).run()

    r1 = _jsonl(run_dir / "round_1" / "evolved.jsonl")
    r2 = _jsonl(run_dir / "round_2" / "evolved.jsonl")
    assert len(r1) == 6 and len(r2) == 5  # the failed lineage is not carried forward
    failed = [r for r in r1 if not r["meta"]["parse_ok"]]
    assert [r["id"] for r in failed] == ["s1-r1"] and failed[0]["meta"]["failure"] == "empty"
    child = next(r for r in r2 if r["meta"]["source_id"] == "s0")
    parent = next(r for r in r1 if r["id"] == "s0-r1")
    assert child["id"] == "s0-r2" and child["meta"]["parent_id"] == "s0-r1"
    assert child["meta"]["parent_instruction"] == parent["instruction"]
    assert child["instruction"].startswith(parent["instruction"])
    for rec in r1 + r2:
        assert {"source_id", "round", "method", "model", "raw", "parse_ok"} <= set(rec["meta"])
        assert (
            rec["meta"]["method"]
            == ["add_constraints", "deepen", "concretize", "reasoning"][
                (rec["meta"]["seed_index"] + rec["meta"]["round"] - 1) % 4
            ]
        )

    resp = _jsonl(run_dir / "round_1" / "responded.jsonl")
    assert len(resp) == 5 and all(r["output"] for r in resp)  # failures are not answered
    m1 = json.loads((run_dir / "round_1" / "metrics.json").read_text())
    assert m1["evolve"]["attempted"] == 6 and m1["evolve"]["parsed"] == 5
    assert m1["evolve"]["failures"] == {"empty": 1} and m1["respond"]["responded"] == 5
    assert summary["round_1/evolve/failed"] == 1 and summary["round_3/evolve/attempted"] == 5
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert len(_jsonl(run_dir / "seeds.jsonl")) == 6


def test_stage_subsets(tmp_path, fake):
    run_dir = tmp_path / "evolve_only"
    Run(_cfg(tmp_path, "stages=[evolve]", "rounds=1"), run_dir).run()
    assert (run_dir / "round_1" / "evolved.jsonl").exists()
    assert not (run_dir / "round_1" / "responded.jsonl").exists()

    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"instruction": "Name a fruit."}\n{"instruction": "Name a tree."}\n')
    run_dir = tmp_path / "respond_only"
    s = Run(_cfg(tmp_path, "stages=[respond]", "data=file", f"data.path={seeds}"), run_dir).run()
    out = _jsonl(run_dir / "input" / "responded.jsonl")
    assert [r["instruction"] for r in out] == ["Name a fruit.", "Name a tree."]
    assert s["input/respond/responded"] == 2 and not (run_dir / "round_1").exists()


def test_rerun_is_all_cache_hits(tmp_path, fake):
    cfg = _cfg(tmp_path, "rounds=2")
    Run(cfg, tmp_path / "a").run()
    n = len(fake.prompts_seen)
    s = Run(cfg, tmp_path / "b").run()
    assert len(fake.prompts_seen) == n and s["engine/prompts"] == 0
    assert s["cache/hits"] == s["cache/steps"] == 4
    assert (tmp_path / "a" / "round_2" / "responded.jsonl").read_text() == (
        tmp_path / "b" / "round_2" / "responded.jsonl"
    ).read_text()


def test_unknown_stage_and_missing_path_fail_cleanly(tmp_path, fake):
    assert run_job(_cfg(tmp_path, "stages=[evolve,dance]"), tmp_path / "x") is None
    err = json.loads((tmp_path / "x" / "summary.json").read_text())["error"]
    assert "unknown stage 'dance'" in err and "evolve" in err and "respond" in err
    assert run_job(_cfg(tmp_path, "data=file"), tmp_path / "y") is None
    assert "data.path" in json.loads((tmp_path / "y" / "summary.json").read_text())["error"]


def test_score_stage_loads_each_model_once_and_judges_generate_little(tmp_path, fake, monkeypatch):
    """Three rounds scored: the generation engine and the IFD scorer are each loaded once (not
    once per round), the judges generate at most metrics.judge.max_tokens, and summary.json
    says where the time went and in which format."""
    import metrics.ifd
    from tests.fakes import FakeIFDScorer

    monkeypatch.setattr(metrics.ifd, "IFDScorer", FakeIFDScorer)
    FakeIFDScorer.loads = 0
    cfg = _cfg(
        tmp_path,
        "rounds=3",
        "stages=[evolve,respond,score,report]",
        "metrics.diversity.enabled=false",
        "metrics.judge.max_tokens.complexity=7",
        "metrics.judge.max_tokens.difficulty=9",
    )
    s = Run(cfg, tmp_path / "run").run()
    assert fake.loads == 1 and FakeIFDScorer.loads == 1
    assert s["round_3/score/ifd/ifd_mean"] == 0.5
    judged = {
        p.max_tokens
        for text, p in zip(fake.prompts_seen, fake.params_seen)
        if "## Score:" in text or "difficulty level alone" in text
    }
    assert judged == {7, 9}
    stages = s["time/evolve"] + s["time/respond"] + s["time/score"] + s["time/report"]
    assert 0.0 < stages <= s["time/total"]
    assert s["time/model_load"] >= 0.0 and "time/train" not in s  # only the stages that ran
    assert s["hardware/engine_dtype"] in ("float32", "bfloat16", "float16")
    assert isinstance(s["hardware/cpu_bf16"], bool) and s["hardware/ifd_dtype"]
    assert "hardware/train_precision" not in s  # no train stage in this job
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Where the time goes" in report and "| score (s) |" in report


def test_an_uncapped_judge_may_generate_the_greedy_length(tmp_path, fake):
    """metrics.judge.max_tokens null (the paper presets): a judge may write as much as any greedy
    call (the paper's 2048), so a judge that reasons before its answer is never cut short."""
    cfg = _cfg(
        tmp_path,
        "stages=[evolve,respond,score]",
        "metrics=[judge]",
        "metrics.judge.max_tokens.complexity=null",
        "generation.greedy.max_tokens=33",
    )
    Run(cfg, tmp_path / "run").run()
    caps = {
        ("score" if "## Score:" in text else "level", p.max_tokens)
        for text, p in zip(fake.prompts_seen, fake.params_seen)
        if "## Score:" in text or "difficulty level alone" in text
    }
    assert caps == {("score", 33), ("level", 16)}  # the demo caps the level at 16


def test_two_jobs_training_the_same_model_train_it_once(tmp_path, monkeypatch):
    """Jobs of a sweep that reach the same train step at once: the training folder is locked
    per key, so the second waits and reuses the first's export instead of training into the
    same folder (the lock is a file lock, so two threads contend as two processes do)."""
    import threading
    import time

    import training.run as tr
    from core.records import write_json_atomic
    from training.stages import train

    calls = []

    def fake_train(cfg, student, records, out, models_dir, seed, loggers=None):
        calls.append(out)
        time.sleep(0.5)
        write_json_atomic(out / "hf" / "config.json", {})
        summary = {"train/steps": 1}
        write_json_atomic(out / "summary.json", summary)
        return summary

    monkeypatch.setattr(tr, "train_sft", fake_train)
    records = [{"id": "a", "instruction": "x", "input": "", "output": "y"}]
    runs = [Run(_cfg(tmp_path, "logger=none"), tmp_path / f"run{k}") for k in range(2)]
    for r in runs:
        r.dir.mkdir()
    got = {}
    threads = [
        threading.Thread(
            target=lambda k=k: got.__setitem__(k, train(runs[k].ctx, runs[k].cfg.train, records))
        )
        for k in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(calls) == 1 and got[0][1] == got[1][1] == {"train/steps": 1}
    assert got[0][0] == got[1][0] == calls[0]


def test_a_failure_after_the_work_is_recorded_and_the_run_stays_a_success(
    tmp_path, fake, monkeypatch
):
    """Intervals and the dataset folder are made from files once the work is done: if either
    breaks, summary.json says so and the run still succeeds (its sets are in their JSONL)."""
    import pipeline.export
    import reporting.items

    def broken(*args, **kwargs):
        raise RuntimeError("disk said no")

    monkeypatch.setattr(reporting.items, "intervals", broken)
    monkeypatch.setattr(pipeline.export, "export_dataset", broken)
    run_dir = tmp_path / "run"
    summary = Run(_cfg(tmp_path, "rounds=1"), run_dir).run()
    assert summary["status"] == "ok"
    assert summary["intervals_error"] == "RuntimeError: disk said no"
    assert summary["export/error"] == "RuntimeError: disk said no"
    assert json.loads((run_dir / "summary.json").read_text())["export/error"]
    assert (run_dir / "round_1" / "responded.jsonl").is_file()


def test_every_run_with_a_set_writes_its_dataset_folder(tmp_path, fake):
    import datasets

    run_dir = tmp_path / "run"
    summary = Run(_cfg(tmp_path, "rounds=2"), run_dir).run()
    assert summary["export/dataset"] == "dataset"
    ds = datasets.load_from_disk(str(run_dir / "dataset"))
    assert set(ds) == {"round_1", "round_2"} and ds["round_1"].num_rows == 6
    run_dir = tmp_path / "off"
    assert "export/dataset" not in Run(_cfg(tmp_path, "export.dataset=false"), run_dir).run()
    assert not (run_dir / "dataset").exists()


def test_selection_on_the_seed_data_itself(tmp_path, fake, monkeypatch):
    """The win-rate presets' path (stages=[score, filter, ...], no evolve, no respond): the seed
    records keep their own outputs, are scored as they are and the filter keeps its share of
    them; the engine answers nothing."""
    import metrics.ifd
    from tests.fakes import FakeIFDScorer

    seen = []

    class Recording(FakeIFDScorer):
        def score(self, records):
            seen.extend(r["output"] for r in records)
            rows = super().score(records)
            for k, row in enumerate(rows):  # distinct scores: the filter has an order to keep
                row["ifd"] = row["ic_ifd"] = k / 10
            return rows

    monkeypatch.setattr(metrics.ifd, "IFDScorer", Recording)
    data = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": f"Task {i}", "input": "", "output": f"Answer {i}"} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(
        tmp_path,
        "data=file",
        f"data.path={data}",
        "data.limit=null",
        "stages=[score,filter]",
        "metrics=[ifd]",
        "filter=ic_ifd",
        "filter.keep_ratio=0.25",
    )
    s = Run(cfg, tmp_path / "run").run()
    assert sorted(seen) == sorted(r["output"] for r in rows)  # the seeds' own outputs
    kept = _jsonl(tmp_path / "run" / "selected.jsonl")
    assert [r["output"] for r in kept] == ["Answer 7", "Answer 6"]  # the top 25% by IC-IFD
    assert s["filter/kept"] == 2 and fake.prompts_seen == []
