"""One engine per model per process: loaded on the first cache miss, released when another model
is needed. Every generation goes through `generate`, which caches and resumes it."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from omegaconf import OmegaConf

from core.cache import StepCache
from engines import build_engine, memory, resolve_engine_kind
from engines.base import Chat, Engine, EngineStats, Generation, Sampling, sampling_key
from engines.precision import resolve_dtype

log = logging.getLogger(__name__)


def model_identity(model_cfg: Any) -> dict:
    """What decides a model's outputs (not where it runs or how much memory it may take)."""
    keys = ("name", "hf_id", "path", "gguf", "revision", "chat_template")
    return {
        k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
        for k in keys
        if (v := model_cfg.get(k)) is not None
    }


# Model settings that change the engine loaded for a model without changing its identity.
ENGINE_LOAD_KEYS = (
    "dtype",
    "max_model_len",
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "gpu_memory_utilization",
)


def _any_of(name: str) -> str:
    """The key of an engine adopted for every model called `name`."""
    return f"adopted:{name}"


# Prompts per engine call under engine.chunk_size=auto. Each call's results are saved before the
# next (a killed run loses at most one call), and a call ends with its slowest sequence. On GPUs
# vLLM runs hundreds of sequences at once and refills the batch as they finish, so a call of a
# few thousand prompts keeps it full and the wait for the last ones is a small share; on a CPU a
# call of 64 already keeps the cores busy and loses little when killed.
GPU_CHUNK = 2048
CPU_CHUNK = 64


def chunk_size_for(value: Any, kind: str, gpus: int, engine_cfg: Any = None) -> int:
    """engine.chunk_size resolved: a number as given; auto from the engine and the device."""
    if value != "auto":
        return int(value)
    if kind == "vllm":
        return GPU_CHUNK if gpus else CPU_CHUNK
    if kind == "openai":  # a server: enough requests in flight for every connection
        return max(CPU_CHUNK, 8 * int((engine_cfg or {}).get("max_concurrency") or 8))
    return max(CPU_CHUNK, 4 * int((engine_cfg or {}).get("batch_size") or 16))  # hf


def _not_failed(result: dict) -> bool:
    """A failed request (engines.openai_engine) is not cached: a rerun asks again."""
    return result.get("finish_reason") != "error"


def data_parallel(engine_cfg: Any, model_cfg: Any, kind: str) -> bool:
    """Whether the model is served by vLLM's data-parallel server (engines.vllm_server), as
    engines.build_engine decides it."""
    if kind != "vllm":
        return False
    from engines.vllm_engine import cuda_device_count
    from engines.vllm_server import resolve_replicas

    per_replica = int(model_cfg.get("tensor_parallel_size") or 1) * int(
        model_cfg.get("pipeline_parallel_size") or 1
    )
    return (
        resolve_replicas(engine_cfg.get("replicas", "auto"), per_replica, cuda_device_count()) > 1
    )


class EnginePool:
    def __init__(
        self, engine_cfg: Any, cache: StepCache, models_dir: str, log_dir: str | None = None
    ):
        self.engine_cfg = engine_cfg
        self.cache = cache
        self.models_dir = models_dir
        self.log_dir = log_dir  # where a served engine's own log goes (the run folder)
        self.kind = resolve_engine_kind(engine_cfg.kind)
        self.stats = EngineStats()
        self._loaded: tuple[str, Engine] | None = None

    def settings(self, model_cfg: Any) -> tuple[Any, str]:
        """(engine settings, resolved kind) for one model: the job's `engine`, with the model's
        own `engine` mapping over it (a judge behind an OpenAI-compatible API while the student
        runs on vLLM: `engine: {kind: openai, base_url: ..., served_model: gpt-4}`)."""
        own = model_cfg.get("engine") if hasattr(model_cfg, "get") else None
        if not own:
            return self.engine_cfg, self.kind
        # The job's settings hold only its engine's keys (struct): open them for the model's.
        base = self.engine_cfg
        if OmegaConf.is_config(base):
            base = OmegaConf.to_container(base, resolve=True)
        cfg = OmegaConf.merge(OmegaConf.create(base), own)
        return cfg, resolve_engine_kind(cfg.kind)

    def runtime_identity(self, model_cfg: Any) -> dict:
        """What else decides the outputs, beside the model and the decoding: the server and the
        model it serves (openai), vLLM's engine seed, the context length, and GPU sampling (its
        random streams differ from the CPU's). Only what is set, so earlier keys stay valid."""
        from engines.vllm_engine import cuda_device_count

        e, kind = self.settings(model_cfg)
        out: dict[str, Any] = {}
        if kind == "openai":
            out.update(base_url=e.get("base_url"), served_model=e.get("served_model"))
        else:
            if kind == "vllm" and int(e.get("seed") or 0) != 0:
                out["seed"] = int(e.seed)
            if model_cfg.get("max_model_len"):
                out["max_model_len"] = int(model_cfg.max_model_len)
            if cuda_device_count():
                out["device"] = "cuda"
        return {k: v for k, v in out.items() if v is not None}

    def engine_key(self, model_cfg: Any) -> str:
        """What the loaded engine is: the model's identity (as the cache keys it, model_identity)
        and every setting that changes the engine built for it (the resolved engine settings, the
        model's format, context length and parallelism). Two roles of one model share an engine;
        a model of the same name with other weights (`path`, `revision`) does not."""
        e, kind = self.settings(model_cfg)
        engine = OmegaConf.to_container(e, resolve=True) if OmegaConf.is_config(e) else dict(e)
        load = {k: model_cfg.get(k) for k in ENGINE_LOAD_KEYS if model_cfg.get(k) is not None}
        key = {"model": model_identity(model_cfg), "kind": kind, "engine": engine, "load": load}
        return json.dumps(key, sort_keys=True, default=str)

    def loaded_key(self) -> str | None:
        """The engine_key of the engine loaded now, if any."""
        return self._loaded[0] if self._loaded else None

    def engine_for(self, model_cfg: Any) -> Engine:
        key = self.engine_key(model_cfg)
        if self._loaded and self._loaded[0] in (key, _any_of(model_cfg.name)):
            return self._loaded[1]
        self.release()
        e, kind = self.settings(model_cfg)
        log.info("loading %s with the %s engine", model_cfg.name, kind)
        cfg = OmegaConf.merge(e, {"kind": kind})
        from engines.vllm_server import server_logs_in

        t0 = time.perf_counter()
        with server_logs_in(self.log_dir):
            self._loaded = (key, build_engine(cfg, model_cfg, self.models_dir))
        self.stats.load_seconds += time.perf_counter() - t0
        return self._loaded[1]

    def adopt(self, model: Any, engine: Engine) -> None:
        """Use an engine loaded elsewhere (benchmarks, notebooks): for the model config `model`
        (keyed as `engine_key`), or, given a name, for every model of that name (the caller
        vouches that the engine serves them all)."""
        self.release()
        key = _any_of(model) if isinstance(model, str) else self.engine_key(model)
        self._loaded = (key, engine)

    def release(self) -> None:
        if self._loaded:
            self._loaded[1].close()
            self._loaded = None
            # The next engine (or a forward-pass model) needs the memory this one held: vLLM
            # refuses to start below its share of the free GPU memory.
            memory.free_gpu_memory()

    def generate(
        self,
        step: str,
        model_cfg: Any,
        items: list[tuple[str, Chat | str, Sampling]],
        desc: str | None = None,
    ) -> dict[str, Generation]:
        """Generations for (id, prompt, sampling) items; cached by everything they depend on."""
        by_id = {i: (prompt, sampling) for i, prompt, sampling in items}
        engine_cfg, kind = self.settings(model_cfg)
        # The resolved format decides the outputs (auto is bf16 on one machine, fp32 on another);
        # a server's format is the server's business.
        dtype = (
            None
            if kind == "openai"
            else resolve_dtype(engine_cfg.get("dtype") or model_cfg.get("dtype"))
        )
        payload = {
            "model": model_identity(model_cfg),
            "engine": kind,
            "dtype": dtype,
            "items": [(i, p, sampling_key(s)) for i, p, s in items],
        }
        if runtime := self.runtime_identity(model_cfg):
            payload["runtime"] = runtime
        # Texts are the same through vLLM's offline engine and its data-parallel server (both
        # tokenise a plain prompt without special tokens and render chats with the same
        # template), so those keys are shared and either path's results serve the other.
        # Log-probabilities are not: the server returns them through the OpenAI format (top
        # tokens keyed by text, no vocabulary size), so a call that asks for them is keyed by
        # the path.
        if any(s.top1_logprobs for _, _, s in items) and data_parallel(engine_cfg, model_cfg, kind):
            payload["path"] = "vllm-server"

        def compute(ids: list[str]) -> list[dict]:
            engine = self.engine_for(model_cfg)
            t0 = time.perf_counter()
            gens = engine.generate([by_id[i][0] for i in ids], [by_id[i][1] for i in ids])
            self.stats.calls += 1
            self.stats.prompts += len(ids)
            self.stats.generated_tokens += sum(g.num_tokens for g in gens)
            self.stats.seconds += time.perf_counter() - t0
            self.stats.by_stage[step] = self.stats.by_stage.get(step, 0) + len(ids)
            self.stats.failed += sum(g.finish_reason == "error" for g in gens)
            return [dataclasses.asdict(g) for g in gens]

        from engines.vllm_engine import cuda_device_count

        chunk = chunk_size_for(
            engine_cfg.get("chunk_size", "auto"), kind, cuda_device_count(), engine_cfg
        )
        raw = self.cache.run(
            step, payload, list(by_id), compute, chunk, desc=desc, keep=_not_failed
        )
        return {i: Generation(**r) for i, r in raw.items()}
