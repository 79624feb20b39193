"""Every role's weights, resolved before the first stage: a gated, missing or mistyped judge or
student fails the job at start-up with the message that says how to supply it, not hours in,
after the evolver has run. Resolving is what the engines do anyway (engines.models): a folder is
checked, a bundled GGUF materialised once, a hub checkpoint found in the local cache or
downloaded, so the stages that load them later find them at once."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import OmegaConf

from core.config import role_model
from engines.models import resolve_model_path

log = logging.getLogger(__name__)


def role_models(cfg: Any, stages: list[Any]) -> dict[str, Any]:
    """{role key: model config} of every model the stages load that has weights of its own
    (one served over an OpenAI-compatible API has none here); the first role to name a model
    stands for the others."""
    out: dict[str, Any] = {}
    seen: set[tuple] = set()
    for stage in stages:
        for key in stage.resources().models:
            value = OmegaConf.select(cfg, key)
            model = role_model(cfg, value, key)
            engine = model.get("engine") or {}
            if (engine.get("kind") or cfg.engine.kind) == "openai":
                continue
            ident = tuple(str(model.get(k)) for k in ("path", "hf_id", "revision", "gguf"))
            if ident not in seen:
                seen.add(ident)
                out[key] = model
    return out


def resolve_weights(cfg: Any, stages: list[Any]) -> dict[str, str]:
    """{role key: local checkpoint folder}; the first role whose weights cannot be had raises
    ModelUnavailableError (its message names the role's `path` override)."""
    found = {}
    for key, model in role_models(cfg, stages).items():
        found[key] = resolve_model_path(model, cfg.models_dir)
        log.info("weights for %s (%s): %s", key, model.get("name"), found[key])
    return found
