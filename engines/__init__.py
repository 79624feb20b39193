"""Text generation behind one interface (`Engine.generate`), and model materialisation."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from core.errors import unknown_option
from engines.base import Chat, Engine, Generation, Sampling
from engines.models import resolve_model_path
from engines.precision import resolve_dtype

log = logging.getLogger(__name__)

ENGINE_KINDS = ("auto", "vllm", "hf", "openai")

__all__ = ["Chat", "Engine", "Generation", "Sampling", "build_engine", "resolve_engine_kind"]


def vllm_usable() -> bool:
    """vLLM importable (GPU or CPU build); checked without starting an engine."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        from engines.vllm_engine import import_vllm

        import_vllm()
        return True
    except Exception as e:  # a broken install: fall back rather than fail
        log.warning("vllm is installed but does not import (%s); engine=auto uses hf", e)
        return False


def resolve_engine_kind(kind: str) -> str:
    if kind not in ENGINE_KINDS:
        raise unknown_option("engine", kind, ENGINE_KINDS)
    if kind == "auto":
        return "vllm" if vllm_usable() else "hf"
    return kind


def build_engine(engine_cfg: Any, model_cfg: Any, models_dir: str | Path) -> Engine:
    """Load the engine `engine_cfg.kind` for `model_cfg` (weights resolved first)."""
    kind = resolve_engine_kind(engine_cfg.kind)
    template = model_cfg.get("chat_template")
    if kind == "openai":
        from engines.openai_engine import OpenAIEngine

        return OpenAIEngine(
            base_url=engine_cfg.base_url,
            model=engine_cfg.get("served_model") or model_cfg.get("hf_id") or model_cfg.name,
            api_key_env=engine_cfg.api_key_env,
            max_concurrency=engine_cfg.max_concurrency,
            timeout_s=engine_cfg.timeout_s,
        )
    path = resolve_model_path(model_cfg, models_dir)
    dtype = resolve_dtype(engine_cfg.get("dtype") or model_cfg.get("dtype"))
    if kind == "vllm":
        from engines.vllm_engine import VLLMEngine

        return VLLMEngine(
            path,
            dtype=dtype,
            max_model_len=model_cfg.get("max_model_len"),
            tensor_parallel_size=model_cfg.get("tensor_parallel_size", 1),
            pipeline_parallel_size=model_cfg.get("pipeline_parallel_size", 1),
            gpu_memory_utilization=model_cfg.get("gpu_memory_utilization", 0.9),
            cpu_memory_utilization=engine_cfg.get("cpu_memory_utilization", 0.3),
            cpu_kv_cache_gib=engine_cfg.get("cpu_kv_cache_gib"),
            enforce_eager=engine_cfg.get("enforce_eager"),
            distributed_executor_backend=engine_cfg.get("distributed_executor_backend"),
            seed=engine_cfg.get("seed", 0),
            chat_template=template,
        )
    from engines.hf import HFEngine

    return HFEngine(
        path,
        dtype=dtype,
        batch_size=engine_cfg.get("batch_size", 16),
        chat_template=template,
        max_model_len=model_cfg.get("max_model_len"),
    )
