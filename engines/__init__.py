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
    from core.config import typed_section
    from core.schemas import EngineConfig, ModelConfig

    e = typed_section(EngineConfig, engine_cfg, "engine")
    m = typed_section(ModelConfig, model_cfg, model_cfg.get("role") or "model")
    kind = resolve_engine_kind(e.kind)
    if kind == "openai":
        from engines.openai_engine import OpenAIEngine

        return OpenAIEngine(
            base_url=e.base_url,
            model=e.served_model or m.hf_id or m.name,
            api_key_env=e.api_key_env,
            max_concurrency=e.max_concurrency,
            timeout_s=e.timeout_s,
            retries=e.retries,
            backoff_s=e.backoff_s,
            max_backoff_s=e.max_backoff_s,
            requests_per_minute=e.requests_per_minute,
            tokens_per_minute=e.tokens_per_minute,
        )
    path = resolve_model_path(model_cfg, models_dir)
    dtype = resolve_dtype(e.dtype or m.dtype)
    if kind == "vllm":
        from engines.vllm_engine import VLLMEngine, cuda_device_count
        from engines.vllm_server import VLLMServerEngine, resolve_replicas

        common = dict(
            dtype=dtype,
            max_model_len=m.max_model_len,
            tensor_parallel_size=m.tensor_parallel_size,
            pipeline_parallel_size=m.pipeline_parallel_size,
            gpu_memory_utilization=m.gpu_memory_utilization,
            cpu_kv_cache_gib=e.cpu_kv_cache_gib,
            enforce_eager=e.enforce_eager,
            seed=e.seed,
            chat_template=m.chat_template,
        )
        per_replica = m.tensor_parallel_size * m.pipeline_parallel_size
        replicas = resolve_replicas(e.replicas, per_replica, cuda_device_count())
        if replicas > 1:  # vLLM's data-parallel server (engines/vllm_server.py)
            return VLLMServerEngine(
                path, replicas=replicas, request_timeout_s=e.timeout_s, **common
            )
        return VLLMEngine(
            path,
            cpu_memory_utilization=e.cpu_memory_utilization,
            distributed_executor_backend=e.distributed_executor_backend,
            **common,
        )
    from engines.hf import HFEngine

    return HFEngine(
        path,
        dtype=dtype,
        batch_size=e.batch_size,
        chat_template=m.chat_template,
        max_model_len=m.max_model_len,
    )
