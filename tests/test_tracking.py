"""W&B: a two-job multirun offline, read back with W&B's own reader."""

import json
import os

import pytest

from tests.conftest import MODELS_DIR, inspect_wandb, run_cli

pytestmark = pytest.mark.slow


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
        s = inspect_wandb(run_dir)
        info = s["summary"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert info["state"] == "finished" and info["exit_code"] == 0
        assert (
            info["config"]["rounds"] == rounds and info["config"]["model"]["name"] == "smollm2_135m"
        )
        assert f"rounds={rounds}" in info["name"] and "cache_dir" not in info["name"]
        # What `auto` resolved to on this machine, so runs on different hardware can be told apart.
        assert info["config"]["hardware"]["engine_dtype"] == summary["hardware/engine_dtype"]
        assert info["config"]["hardware"]["cpu_bf16"] == summary["hardware/cpu_bf16"]
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
