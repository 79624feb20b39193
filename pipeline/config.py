"""Config helpers shared by run.py and the tests: resolvers, model configs by name, validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from pipeline.data import bundled_path
from pipeline.errors import unknown_option

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("bundled", bundled_path, replace=True)


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config run.py would get, composed without starting a Hydra job (tests, benches)."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides or [])


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def load_model_config(name: str) -> DictConfig:
    """A conf/model entry by name, for roles beside the evolver (responder, judge, scorer)."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        raise unknown_option("model", name, options("model"))
    return OmegaConf.load(path)


def model_for_role(cfg: DictConfig, name: Any) -> DictConfig:
    """null means the run's own model (the evolver); a string names a conf/model entry."""
    return cfg.model if not name else load_model_config(str(name))
