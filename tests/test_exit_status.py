"""run.py's exit status comes from files only: each job's summary.json and a sweep's
`<sweep>/sweep.json` (its comparison), found through the record Hydra's callback writes for the
invocation; no module keeps a list of failures."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

import reporting.compare
from reporting.compare import CompareCallback
from reporting.jobs import (
    RECORD_KEY,
    SWEEP_FILE,
    invocation_failures,
    job_failure,
    record_invocation,
    sweep_outcome,
)
from tests.conftest import run_cli


def _job(folder: Path, summary: dict | None, overrides: list[str] = ()) -> Path:
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_no_module_keeps_the_exit_status():
    import pipeline.runner

    assert not hasattr(reporting.compare, "SWEEP_FAILURES")
    assert not hasattr(pipeline.runner, "FAILED_JOBS")
    assert "FAILED_JOBS" not in (Path(__file__).parents[1] / "run.py").read_text()


def test_a_single_run_is_judged_by_its_summary_json(tmp_path):
    record = tmp_path / "record.json"
    run = tmp_path / "run"
    record_invocation(record, "run", run, leader=True, returned=True)
    assert invocation_failures(record) == [
        {"dir": str(run), "error": "no readable summary.json (the job died)"}
    ]
    _job(run, {"status": "ok"})
    assert invocation_failures(record) == []
    _job(run, {"status": "interrupted", "signal": "SIGTERM"})
    assert invocation_failures(record) == [{"dir": str(run), "error": "interrupted"}]
    _job(run, {"status": "failed", "error": "boom"})
    assert invocation_failures(record) == [{"dir": str(run), "error": "boom"}]
    assert job_failure(run) == {"dir": str(run), "error": "boom"}


def test_nothing_ran_is_no_failure(tmp_path):
    """`--cfg job`, `--help`: Hydra runs no job, the record stays empty."""
    empty = tmp_path / "record.json"
    empty.write_text("")
    assert invocation_failures(empty) == []
    assert invocation_failures(tmp_path / "absent.json") == []


def test_a_follower_rank_writes_no_summary_and_goes_by_its_return(tmp_path):
    record = tmp_path / "record.json"
    record_invocation(record, "run", tmp_path / "run", leader=False, returned=True)
    assert invocation_failures(record) == []
    record_invocation(record, "run", tmp_path / "run", leader=False, returned=False)
    assert len(invocation_failures(record)) == 1


def _hydra_config(sweep: Path, pair=None):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}, "compare": {"pair": pair}})


def test_the_sweep_callback_records_its_folder_and_a_failed_comparison(tmp_path):
    """The multirun's jobs started by this invocation (an older job in the folder does not
    count) and the comparison's outcome, in <sweep>/sweep.json (not a summary.json: the sweep
    folder is no job)."""
    import os

    sweep, record = tmp_path / "sweep", tmp_path / "record.json"
    old = _job(sweep / "0", {"status": "failed", "error": "an earlier sweep's"}, ["model=a"])
    os.utime(old / ".hydra", (1, 1))
    callback = CompareCallback(record=str(record))
    config = _hydra_config(sweep, ["model=a", "model=zz"])
    callback.on_multirun_start(config)
    assert sweep_outcome(sweep) == {"comparison": {"status": "pending"}}
    _job(sweep / "1", {"status": "ok", "rounds": 1}, ["model=a"])
    _job(sweep / "2", {"status": "failed", "error": "missing value"}, ["model=b"])
    callback.on_multirun_end(config)
    outcome = sweep_outcome(sweep)["comparison"]
    assert outcome["status"] == "failed" and "matches no job" in outcome["error"]
    assert not (sweep / "summary.json").exists() and (sweep / SWEEP_FILE).is_file()
    failed = invocation_failures(record)
    assert [f["dir"] for f in failed] == [str(sweep / "2"), str(sweep)]
    assert failed[0]["error"] == "missing value" and failed[1]["error"].startswith("compare: ")
    # The same sweep without the bad arm: its comparison is fine; only the failed job counts.
    callback.on_multirun_end(_hydra_config(sweep))
    assert sweep_outcome(sweep) == {"comparison": {"status": "ok"}}
    assert [f["dir"] for f in invocation_failures(record)] == [str(sweep / "2")]


def test_the_run_callback_records_the_output_folder(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn()
    ret.hydra_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path / "r")}}})
    ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "ok"}
    record = tmp_path / "record.json"
    CompareCallback(record=str(record)).on_run_end(OmegaConf.create({}), job_return=ret)
    assert json.loads(record.read_text()) == {
        "mode": "run",
        "dir": str(tmp_path / "r"),
        "leader": True,
        "returned": True,
    }
    CompareCallback().on_run_end(OmegaConf.create({}), job_return=ret)  # no record: nothing


def test_run_py_names_its_own_record_and_replaces_an_inherited_one(tmp_path):
    import importlib

    run = importlib.import_module("run")
    argv = ["model=a", f"{RECORD_KEY}='/tmp/parent.json'", "-m"]
    out = run.record_override(argv, tmp_path / "mine.json")
    assert out[:2] == ["model=a", "-m"] and out[2] == f"{RECORD_KEY}='{tmp_path / 'mine.json'}'"


def test_a_sweep_whose_comparison_fails_exits_1(tmp_path):
    """The comparison ran in this process, but its failure reaches the exit status through
    sweep.json, as a job's does through its summary.json."""
    sweep = tmp_path / "sweep"
    proc = run_cli(
        [
            "-m",
            "seed=0,1",
            "stages=[]",
            "logger=none",
            'compare.pair=["seed=0","seed=7"]',
            f"cache_dir={tmp_path / 'cache'}",
            f"hydra.sweep.dir={sweep}",
        ]
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "1 job(s) failed" in out and f"{sweep}: compare: " in out and "matches no job" in out
    assert json.loads((sweep / SWEEP_FILE).read_text())["comparison"]["status"] == "failed"
    assert all(json.loads((sweep / n / "summary.json").read_text())["status"] == "ok" for n in "01")
