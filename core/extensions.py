"""Out-of-tree extensions named by a config, imported so their registrations take effect.

A job's config names the modules that register what is not built in: `plugins: [package.module,
...]` (stages, or anything else a module registers on import), every metric's `impl` and the
scenario's `impl`. The runner imports them at start-up, before the config is checked; reports
(reporting.jobs) import them again from each job's saved config, so a comparison made in a fresh
process (`python -m pipeline.compare`, the end of a multirun under joblib or SLURM) knows the same
stats, headlines and directions as the job did. Importing is idempotent: a module already imported
registers nothing twice.

Benchmark folders (`eval.benchmark_dirs`) are not imported: a report builds a benchmark registry
from them (evaluation.benchmarks.registry_for).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from core.errors import ConfigError
from core.registry import load_impl


def _select(cfg: Any, key: str) -> Any:
    """`key` of a composed or saved config (a saved `.hydra/config.yaml` holds interpolations
    that may not resolve outside its job: those count as unset)."""
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg or {})
    value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=False)
    return value


def extension_modules(cfg: Any) -> list[tuple[str, str]]:
    """(config key, module spec) of every extension `cfg` names, in import order: `plugins`
    first, then the metrics' `impl`, then the scenario's."""
    out: list[tuple[str, str]] = []
    plugins = _select(cfg, "plugins") or []
    if isinstance(plugins, str):
        plugins = [plugins]
    if not isinstance(plugins, list):
        raise ConfigError(f"plugins: a list of modules (plugins=[pkg.module]), not {plugins!r}")
    for i, spec in enumerate(plugins):
        if not isinstance(spec, str) or not spec.strip():
            raise ConfigError(f"plugins[{i}]: a module name (package.module), not {spec!r}")
        out.append((f"plugins[{i}]", spec.strip()))
    metrics = _select(cfg, "metrics") or {}
    if isinstance(metrics, dict):
        for name, node in metrics.items():
            impl = node.get("impl") if isinstance(node, dict) else None
            if isinstance(impl, str) and impl:
                out.append((f"metrics.{name}.impl", impl))
    impl = _select(cfg, "scenario.impl")
    if isinstance(impl, str) and impl:
        out.append(("scenario.impl", impl))
    return out


def load_extensions(cfg: Any) -> None:
    """Import every module `cfg` names (see the module docstring); a module that cannot be
    imported is a ConfigError naming its key."""
    for key, spec in extension_modules(cfg):
        load_impl(spec, key)
