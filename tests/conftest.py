from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig

from core.config import compose_config, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
# The materialised bundled model is shared with `make demo` (and across test runs) via the user
# cache; per-test step caches live in tmp_path.
MODELS_DIR = str(
    Path(os.environ.get("EVOLVERS_CACHE", Path.home() / ".cache" / "evolvers-study")) / "models"
)

register_resolvers()


def compose_cfg(overrides: list[str] | None = None) -> DictConfig:
    return compose_config(overrides)


def run_cli(args: list[str], env: dict | None = None, timeout: int = 600, cwd=ROOT):
    """`python run.py ARGS` in a subprocess; returns CompletedProcess with text output."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def inspect_wandb(run_dir: Path) -> dict:
    """A job's offline W&B run read back with W&B's own reader: {"summary": state, config and
    summary as JSON, "history": the logged rows as text}."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    (offline,) = list((Path(run_dir) / "wandb").glob("offline-run-*"))

    def leet(*flags: str) -> str:
        cmd = [str(wandb_cli), "leet", "inspect", *flags, "--json", str(offline)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    return {"summary": json.loads(leet("--summary")), "history": leet()}


@pytest.fixture(scope="session")
def bundled_model_dir() -> str:
    from engines.models import resolve_model_path

    return resolve_model_path(compose_cfg().model, MODELS_DIR)


@pytest.fixture(scope="session")
def hf_engine(bundled_model_dir):
    from engines.hf import HFEngine

    engine = HFEngine(bundled_model_dir, dtype="float32", batch_size=8)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_engine(bundled_model_dir):
    from engines.vllm_engine import VLLMEngine

    # dtype auto, as in the product: bf16 where the CPU has it natively, else fp32.
    engine = VLLMEngine(bundled_model_dir, dtype="auto", max_model_len=2048, seed=0)
    yield engine
    engine.close()
