"""W&B: a two-job multirun offline, read back with W&B's own reader."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELS_DIR, run_cli

pytestmark = pytest.mark.slow


def _inspect(run_dir: Path) -> dict:
    wandb_cli = Path(sys.executable).with_name("wandb")
    (offline,) = list((run_dir / "wandb").glob("offline-run-*"))
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--summary", "--json", str(offline)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    history = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(offline)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {"summary": json.loads(out), "history": history}


def test_two_job_sweep_logs_two_offline_runs(tmp_path, bundled_model_dir):
    res = run_cli(
        [
            "-m",
            "rounds=1,2",
            "engine=hf",
            "data.limit=3",
            "stages=[evolve,respond,report]",
            "generation.evolve.max_tokens=32",
            "generation.greedy.max_tokens=32",
            f"cache_dir={tmp_path / 'cache'}",
            f"models_dir={MODELS_DIR}",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        env={k: v for k, v in os.environ.items() if k != "WANDB_MODE"},
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    groups = set()
    for job, rounds in (("0", 1), ("1", 2)):
        run_dir = tmp_path / "sweep" / job
        s = _inspect(run_dir)
        info = s["summary"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert info["state"] == "finished" and info["exit_code"] == 0
        assert (
            info["config"]["rounds"] == rounds and info["config"]["model"]["name"] == "smollm2_135m"
        )
        assert f"rounds={rounds}" in info["name"] and "cache_dir" not in info["name"]
        for key in ("round_1/evolve/parsed", "engine/prompts", "status"):
            assert info["summary"][key] == summary[key]
        assert info["summary"]["round"] == rounds  # per-round metrics, the round as their step
        assert '"evolve/attempted"' in s["history"] and "samples/round_1" in s["history"]
        groups.add(json.dumps(info.get("group")))
    assert len(groups) == 1  # one sweep, one group
    # The multirun ends with a comparison of its jobs (hydra callback).
    md = (tmp_path / "sweep" / "comparison.md").read_text()
    assert md.splitlines()[0].startswith("| job | rounds | status |")
    assert (tmp_path / "sweep" / "report.md").is_file()
