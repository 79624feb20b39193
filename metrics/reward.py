"""Reward (SPEC §5): a reward model scores (evolution prompt built from the previous-round
instruction, evolved instruction) as a user/assistant pair.

Backends: `seq_cls` — any AutoModelForSequenceClassification reward model (e.g.
Skywork/Skywork-Reward-Llama-3.1-8B-v0.2), the score is logits[0]; `get_scores` — models whose
remote code exposes `get_scores(tokenizer, conversations)` (e.g. internlm/internlm2-7b-reward)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from core.errors import DataError, unknown_option
from core.records import Record
from engines.base import Chat
from engines.models import hub_ref
from metrics.base import METRICS, Field, Metric, MetricConfig, Stat


class RewardScorer:
    def __init__(
        self,
        path: str,
        kind: str = "seq_cls",
        dtype: str = "auto",
        batch_size: int = 8,
        max_length: int = 4096,
        device: str | None = None,
    ):
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        from engines.precision import torch_dtype

        if kind not in ("seq_cls", "get_scores"):
            raise unknown_option("reward model kind", kind, ("seq_cls", "get_scores"))
        self.kind = kind
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.batch_size = batch_size
        self.max_length = max_length
        path, revision = hub_ref(path)  # org/name@<commit>: that commit (and its remote code)
        self.tokenizer = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=kind == "get_scores"
        )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"
        cls = AutoModelForSequenceClassification if kind == "seq_cls" else AutoModel
        self.model = cls.from_pretrained(
            path,
            revision=revision,
            dtype=torch_dtype(dtype),
            trust_remote_code=kind == "get_scores",
        )
        if kind == "seq_cls" and self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()

    @torch.inference_mode()
    def score(self, conversations: list[Chat]) -> list[float]:
        out: list[float] = []
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start : start + self.batch_size]
            if self.kind == "get_scores":
                scores = self.model.get_scores(self.tokenizer, batch)
                out += [float(s) for s in (scores if isinstance(scores, list) else [scores])]
                continue
            texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for c in batch]
            enc = self.tokenizer(
                texts,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=False,
            ).to(self.device)
            logits = self.model(**enc).logits
            out += logits[:, 0].float().tolist()
        return out

    def close(self) -> None:
        del self.model


def reward_summary(scores: list[float | None], lengths: list[int]) -> dict[str, Any]:
    """Raw mean and the length-controlled mean: score / len * mean_len, averaged (lengths in the
    reward model's tokens)."""
    pairs = [(s, n) for s, n in zip(scores, lengths) if s is not None and n > 0]
    if not pairs:
        return {"mean": None, "lc_mean": None, "scored": 0}
    mean_len = sum(n for _, n in pairs) / len(pairs)
    return {
        "mean": sum(s for s, _ in pairs) / len(pairs),
        "lc_mean": sum(s / n * mean_len for s, n in pairs) / len(pairs),
        "scored": len(pairs),
    }


def reward_pair(evolution_prompt: Chat, evolved_instruction: str) -> Chat:
    return [*evolution_prompt, {"role": "assistant", "content": evolved_instruction}]


@dataclass
class RewardConfig(MetricConfig):
    enabled: bool = False  # no reward model ships offline
    model: str | None = None  # HF id or folder, e.g. Skywork/Skywork-Reward-Llama-3.1-8B-v0.2
    kind: str = "seq_cls"  # seq_cls | get_scores (InternLM2-Reward, trust_remote_code)
    dtype: str = "auto"
    batch_size: int = 8


@METRICS.register()
class RewardMetric(Metric):
    """A reward model's score of (evolution prompt, evolved instruction); records without an
    evolution prompt are skipped."""

    name = "reward"
    dtype_field = "dtype"
    Config = RewardConfig
    order = 31
    fields = (Field("reward", higher_is_better=True),)
    stats = (
        Stat("mean", higher_is_better=True, headline=True, of="reward"),
        Stat("lc_mean", higher_is_better=True),
        Stat("scored"),
    )
    key_excludes = ("dtype", "batch_size")

    def score(self, set_name: str, records: list[Record]) -> dict[str, dict]:
        from engines.precision import resolve_dtype

        cfg = self.cfg
        if not cfg.model:
            raise DataError(
                "metrics.reward.enabled=true needs metrics.reward.model (an HF id or a local "
                "folder of a reward model, e.g. Skywork/Skywork-Reward-Llama-3.1-8B-v0.2)"
            )
        by_id = {r["id"]: r for r in records}
        pairs = {
            i: reward_pair(p, by_id[i]["instruction"])
            for i, p in self.evolution_prompts(records).items()
        }
        if not pairs:
            return {}
        dtype = resolve_dtype(cfg.dtype, what="metrics.reward.dtype")

        def load() -> RewardScorer:
            return RewardScorer(
                cfg.model, kind=cfg.kind, dtype=dtype, batch_size=int(cfg.batch_size)
            )

        def compute(ids: list[str]) -> list[dict]:
            scorer = self.ctx.model("reward", load)
            return [{"reward": s} for s in scorer.score([pairs[i] for i in ids])]

        payload = {**self.cache_key(), "dtype": dtype, "pairs": pairs}
        return self.ctx.cache.run(
            "reward", payload, list(pairs), compute, 256, desc=f"{set_name} reward"
        )

    def summarize(self, set_name, records, rows) -> dict[str, Any]:
        if not rows:
            return {"skipped": "no evolution prompts (records were not evolved)"}
        ids = list(rows)
        lengths = self.lengths({r["id"]: r for r in records}, ids)
        summary = reward_summary([rows[i]["reward"] for i in ids], [lengths[i] for i in ids])
        return {"model": self.cfg.model, **summary}

    def lengths(self, by_id: dict[str, Record], ids: list[str]) -> dict[str, int]:
        """The length-controlled mean's lengths: each evolved instruction's tokens under the
        reward model's own tokenizer (as the paper's eval_reward.py); no model load, so not
        cached. The tokenizer loads once per stage (summarize runs once per set)."""
        if not hasattr(self, "_tok"):
            from transformers import AutoTokenizer

            remote = self.cfg.kind == "get_scores"
            repo, revision = hub_ref(self.cfg.model)
            self._tok = AutoTokenizer.from_pretrained(
                repo, revision=revision, trust_remote_code=remote
            )
        tok = self._tok
        return {
            i: len(tok(by_id[i]["instruction"], add_special_tokens=False).input_ids) for i in ids
        }
