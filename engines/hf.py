"""transformers `generate`, batched with left padding. Always available; the CPU fallback."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from core.errors import ConfigError
from engines.base import Chat, Generation, Sampling, cut_at_stop, per_prompt
from engines.precision import resolve_dtype, torch_dtype
from engines.turns import eos_ids, stop_token_ids

log = logging.getLogger(__name__)


def load_tokenizer(path: str, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = padding_side
    if tok.pad_token_id is None:
        # Decoder-only models often ship without a pad token; eos is masked out anyway.
        tok.pad_token = tok.eos_token
    return tok


def render_prompt(tokenizer: Any, prompt: Chat | str) -> str:
    """A chat goes through the model's chat template; a plain string is used as it is."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            "the model's tokenizer has no chat template; set model.chat_template to a Jinja "
            "template or send plain-string prompts"
        )
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


class HFEngine:
    name = "hf"

    def __init__(
        self,
        path: str,
        dtype: str = "auto",
        batch_size: int = 16,
        device: str | None = None,
        chat_template: str | None = None,
        max_model_len: int | None = None,
    ):
        from transformers import AutoModelForCausalLM

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.tokenizer = load_tokenizer(path)
        if chat_template:
            self.tokenizer.chat_template = chat_template
        t0 = time.perf_counter()
        dtype = resolve_dtype(dtype)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
        self.model.to(self.device).eval()
        self.max_model_len = max_model_len or getattr(
            self.model.config, "max_position_embeddings", 4096
        )
        # The model's EOS ids and the turn end of the template its chats are rendered with: a
        # base model given a chat template stops where the template ends an answer.
        self.eos_ids = eos_ids(self.tokenizer, self.model.generation_config)
        self.eos_ids += [i for i in stop_token_ids(self.tokenizer) if i not in self.eos_ids]
        log.info("hf engine: loaded %s (%s) in %.1fs", path, dtype, time.perf_counter() - t0)

    def generate(
        self, prompts: list[Chat | str], params: Sampling | list[Sampling]
    ) -> list[Generation]:
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        plist = per_prompt(params, len(prompts))
        # A batch shares one decoding setup (and, when sampling, one seed: its first prompt's).
        groups: dict[tuple, list[int]] = {}
        for i, p in enumerate(plist):
            key = (p.temperature, p.top_p, p.max_tokens, p.top1_logprobs, p.stop)
            groups.setdefault(key, []).append(i)
        results: list[Generation | None] = [None] * len(texts)
        for members in groups.values():
            for i, gen in zip(members, self._generate_group(texts, members, plist)):
                results[i] = gen
        return results  # type: ignore[return-value]

    def _generate_group(
        self, texts: list[str], members: list[int], plist: list[Sampling]
    ) -> list[Generation]:
        # Longest first: batches of similar length waste less compute on padding.
        order = sorted(range(len(members)), key=lambda k: -len(texts[members[k]]))
        out: list[Generation | None] = [None] * len(members)
        for start in range(0, len(order), self.batch_size):
            ks = order[start : start + self.batch_size]
            batch = [texts[members[k]] for k in ks]
            for k, gen in zip(ks, self._generate_batch(batch, plist[members[ks[0]]])):
                out[k] = gen
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, texts: list[str], params: Sampling) -> list[Generation]:
        tok = self.tokenizer
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = {k: v.to(self.device) for k, v in enc.items()}
        prompt_len = enc["input_ids"].shape[1]
        max_new = max(1, min(params.max_tokens, self.max_model_len - prompt_len))
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new,
            pad_token_id=tok.pad_token_id,
            return_dict_in_generate=True,
            output_logits=params.top1_logprobs > 0,
            eos_token_id=self.eos_ids or None,
        )
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            kwargs["top_k"] = None
            if params.seed is not None:
                torch.manual_seed(params.seed)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        out = self.model.generate(**enc, **kwargs)
        new = out.sequences[:, prompt_len:]
        eos_ids = set(self.eos_ids)
        gens = []
        for b in range(new.shape[0]):
            ids = new[b].tolist()
            n, finish = len(ids), "length"
            for j, t in enumerate(ids):
                if t in eos_ids:
                    n, finish = j + 1, "stop"
                    break
            top1, tops = None, None
            if params.top1_logprobs > 0:
                k = min(params.top1_logprobs, n)
                # Raw logits, before temperature/top-p: the model's own top-1 probability.
                lps = [torch.log_softmax(out.logits[j][b].float(), -1) for j in range(k)]
                top1 = [float(lp.max()) for lp in lps]
                if params.top_logprobs > 0:
                    tops = [lp.topk(params.top_logprobs).values.tolist() for lp in lps]
            text = tok.decode(ids[:n], skip_special_tokens=True)
            text, stopped = cut_at_stop(text, params.stop)
            if stopped:
                finish = "stop"
            gens.append(
                Generation(
                    text=text,
                    num_tokens=n,
                    finish_reason=finish,
                    top1_logprobs=top1,
                    prompt_tokens=int(enc["attention_mask"][b].sum()),
                    top_logprobs=tops,
                    vocab_size=int(out.logits[0].shape[-1]) if tops else 0,
                )
            )
        return gens

    def close(self) -> None:
        del self.model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
