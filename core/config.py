"""The composed config: resolvers, config groups, role models, and start-up validation.

`validate(cfg)` checks every section against its schema (`core.schemas`, a scenario's `Config`, a
metric's `Config`) before any model loads. Role models (`train.student`, `respond.model`,
`metrics.<m>.model`, `eval.model`, `eval.pairwise.judge|against`) resolve here, the same way for
every role: null is the run's own model, a string names a `conf/model` entry, a mapping is a model
selected through Hydra (`model@train.student=qwen2.5_0.5b`, then `train.student.path=/ckpt`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from core import schemas
from core.data import bundled_path
from core.errors import ConfigError, unknown_option
from core.schemas import typed_section  # the checker (also imported from here)
from core.stage import STAGES

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def launch_folder(pattern: str) -> str:
    """A run's folder name (`hydra.run.dir: outputs/${launch_folder:%Y-%m-%d/%H-%M-%S}`): one
    SLURM job's, `slurm-<job id>`, so that every task of a multi-node `srun` (each resolves the
    config itself) and the job requeued after preemption (same id) share one folder; one
    torchrun launch's likewise; else the time now."""
    import os
    from datetime import datetime

    env = os.environ
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    if env.get("TORCHELASTIC_RUN_ID") and env["TORCHELASTIC_RUN_ID"] != "none":
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return datetime.now().strftime(pattern)


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("bundled", bundled_path, replace=True)
    OmegaConf.register_new_resolver("launch_folder", launch_folder, use_cache=True, replace=True)


# At import, not in run.py alone: a sweep job on SLURM is run.py's task function unpickled in a
# worker that never executes run.py's module code, and `data=tiny` resolves `${bundled:...}`
# there. Everything that reads a job's config imports this module first (pipeline.runner).
register_resolvers()


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config run.py would get for `overrides`: inside a running Hydra job through that job's
    Hydra (another arm of a sweep, pipeline.arms), else a fresh composition (tests, benches)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import open_dict

    register_resolvers()
    gh = GlobalHydra.instance()
    if gh.is_initialized() and gh.hydra is not None:
        cfg = gh.hydra.compose_config(
            "config", list(overrides or []), run_mode=RunMode.RUN, with_log_configuration=False
        )
        with open_dict(cfg):
            cfg.pop("hydra", None)
        return cfg
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides or [])


def expand_seeds(argv: list[str]) -> list[str]:
    """`seeds=N` on the command line: the multirun `seed=range(N)` (each job reruns what depends
    on the seed; shared prefixes come from the cache). Other arguments pass unchanged."""
    out, found = [], False
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and key == "seeds":
            if not value.isdigit() or int(value) < 1:
                raise SystemExit(f"error: seeds={value}: a number of seeds >= 1 (seeds=3)")
            if any(a.partition("=")[0] == "seed" for a in argv):
                raise SystemExit("error: give either seeds=N or seed=..., not both")
            out.append(f"seed=range({int(value)})")
            found = True
        else:
            out.append(arg)
    if found and not {"-m", "--multirun"} & set(out):
        out.insert(0, "-m")
    return out


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# Roles that have a model in the defaults list (selected without `+`).
_DEFAULT_ROLES = ("train.student",)


def load_model_config(name: str, role: str = "model") -> DictConfig:
    """A conf/model entry by name, for the role `role` (the config key that named it)."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        raise unknown_option(f"model for {role}", name, options("model"))
    cfg = OmegaConf.load(path)
    cfg.role = role
    if role != "model":  # a name string: its fields are reachable once Hydra selects it
        cfg.select = f"{'' if role in _DEFAULT_ROLES else '+'}model@{role}={name}"
    return cfg


def path_override(model_cfg: Any) -> str:
    """The command-line override that points this model's role at local weights."""
    return role_override(model_cfg, "path", "/some/dir")


def role_override(model_cfg: Any, key: str, value: str) -> str:
    """The command-line override that sets `key` of this model's role (selecting the model
    first where a role names it by a string)."""
    role = model_cfg.get("role") or "model"
    select = model_cfg.get("select")
    return f"{select + ' ' if select else ''}{role}.{key}={value}"


def role_model(cfg: DictConfig, value: Any, key: str) -> DictConfig:
    """The model config of the role `key` whose value is `value` (see the module docstring)."""
    if value is None or value == "":
        out = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
        out.role = "model"
        return out
    if isinstance(value, str):
        return load_model_config(value, key)
    out = OmegaConf.create(
        OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else dict(value)
    )
    out.role = key
    return out


def stage_sections() -> dict[str, type | None]:
    """{top-level key: its Config (None: unchecked)} of every registered stage whose settings
    section is not one of the framework's own: an out-of-tree stage's (`plugins: [...]` having
    registered it). A built-in stage without settings has no section."""
    out: dict[str, type | None] = {}
    for stage in STAGES:
        key = stage.config_key()
        if key in schemas.TOP_LEVEL or stage.scenario_settings:
            continue
        if stage.Config is None and stage.__module__ in STAGES.builtins:
            continue
        out.setdefault(key, stage.Config)
    return out


def validate(cfg: DictConfig) -> None:
    """Every section against its schema, before any work (see the module docstring). A top-level
    key is one of the framework's (`core.schemas.TOP_LEVEL`) or a registered stage's own section,
    checked against that stage's `Config`."""
    extra: dict[str, type | None] | None = None
    for key in cfg:
        if key in schemas.TOP_LEVEL:
            continue
        extra = stage_sections() if extra is None else extra  # the stages' modules load once
        if key not in extra:
            raise unknown_option(
                "top-level config key", str(key), [*schemas.TOP_LEVEL, *sorted(extra)]
            )
        if extra[key] is not None:
            typed_section(extra[key], cfg[key], str(key))
    for key, schema in schemas.SECTIONS.items():
        if key in cfg:
            typed_section(schema, cfg[key], key)
    for sub in cfg.get("generation") or {}:
        typed_section(schemas.DecodingConfig, cfg.generation[sub], f"generation.{sub}")
    for key in schemas.ROLES:
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, str):
            typed_section(schemas.ModelConfig, value, key)
    if int(cfg.rounds) < 1 and "evolve" in cfg.stages:
        raise ConfigError(f"rounds must be >= 1 (got {cfg.rounds})")
