"""IFD and IC-IFD (SPEC §5) with a causal LM, teacher forcing, no chat template.

For a record with query Q and answer A:
    X = Q + "\\n" + A, tokenised as one sequence; n_Q = tokens of Q alone (BOS included if added)
    L(A|Q) = mean cross-entropy over the positions of X from n_Q on
    L(Q)   = mean cross-entropy over the Q positions of X (same forward pass)
    L(A)   = mean cross-entropy of A scored alone
    IFD    = L(A|Q) / L(A)            IC-IFD = L(A|Q) / (L(Q) * L(A)) = IFD / L(Q)
Exactly two forward passes per record (X, then A), batched with attention masks; labels of padding
are -100. `form="ppl"` uses exp of each loss instead of the loss.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from core.errors import ConfigError, DataError
from core.records import Record, query_text
from metrics.base import METRICS, Field, Metric, MetricConfig, Stat, mean

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Tokenised:
    x: list[int]  # Q + "\n" + A, truncated at the cutoff
    n_q: int
    a: list[int]  # A alone, truncated at the cutoff
    truncated: bool
    boundary_fallback: bool


def tokenise(tokenizer: Any, q: str, a: str, max_length: int) -> Tokenised:
    """X as one sequence; if the tokeniser merges across the Q/A seam, Q's own tokens are kept and
    "\\n" + A is appended, so the first n_Q tokens of X are exactly Q's."""
    q_ids = tokenizer(q)["input_ids"]
    x_ids = tokenizer(q + "\n" + a)["input_ids"]
    fallback = x_ids[: len(q_ids)] != q_ids
    if fallback:
        tail = tokenizer("\n" + a, add_special_tokens=False)["input_ids"]
        x_ids = q_ids + tail
    a_ids = tokenizer(a)["input_ids"]
    truncated = len(x_ids) > max_length or len(a_ids) > max_length
    return Tokenised(x_ids[:max_length], len(q_ids), a_ids[:max_length], truncated, fallback)


HEAD_ROWS = 256  # positions per LM-head chunk: a small (rows x vocab) logits block (fastest on CPU)


def _token_losses(
    model: Any, seqs: list[list[int]], pad_id: int, device: str, loss_fn: Callable | None = None
) -> list[torch.Tensor]:
    """Per-token cross-entropy (nats) of each sequence's tokens 1..n-1, one padded forward pass.

    The transformer runs once over the padded batch; the LM head and the loss run only on real
    (non-padding) positions, a chunk at a time, so the full (batch x length x vocab) logits are
    never materialised — on CPU that tensor, not the matmuls, was the bottleneck.
    """
    loss_fn = loss_fn or token_cross_entropy
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    ids, mask = ids.to(device), mask.to(device)
    head = model.get_output_embeddings()
    if head is None or _scales_logits(model.config):
        hidden, head = None, None
        logits_all = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    else:
        hidden = model.base_model(
            input_ids=ids, attention_mask=mask, use_cache=False
        ).last_hidden_state
    # Next-token prediction: position t scores token t+1; only positions whose target is real.
    keep = mask[:, 1:].bool()
    targets = ids[:, 1:][keep]
    rows = (hidden[:, :-1] if hidden is not None else logits_all[:, :-1])[keep]
    losses = []
    for start in range(0, rows.shape[0], HEAD_ROWS):
        block = rows[start : start + HEAD_ROWS]
        logits = head(block) if head is not None else block
        losses.append(loss_fn(logits, targets[start : start + HEAD_ROWS]))
    flat = torch.cat(losses).cpu() if losses else torch.empty(0)
    out, offset = [], 0
    for s in seqs:
        out.append(flat[offset : offset + len(s) - 1])
        offset += len(s) - 1
    return out


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of each (rows, vocab) logit row at its target, computed in fp32 whatever
    the logits' dtype: logsumexp minus the target's logit, which is what F.cross_entropy computes.
    The (rows, vocab) layout matters: on CPU the (N, vocab, L) layout is measurably less accurate
    (~2e-4 relative)."""
    f = logits.float()
    return torch.logsumexp(f, -1) - f.gather(1, targets[:, None])[:, 0]


class FusedCrossEntropy:
    """`token_cross_entropy` fused by torch.compile: the fp32 upcast, logsumexp and gather become
    one pass over the logits. In eager mode that upcast and the softmax passes cost more than the
    LM-head matmul itself on CPU with bf16; fused, they are nearly free. Falls back to eager, with a
    warning, where torch.compile cannot build a kernel (e.g. no C++ compiler)."""

    def __init__(self) -> None:
        self.fn: Callable = torch.compile(token_cross_entropy, dynamic=True)
        self.fused = True

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.fused:
            try:
                return self.fn(logits, targets)
            except Exception as exc:  # noqa: BLE001 - any backend failure means: use eager
                log.warning("torch.compile of the IFD loss failed, using eager: %s", exc)
                self.fn, self.fused = token_cross_entropy, False
        return token_cross_entropy(logits, targets)


def attention_for(attn_implementation: str, dtype: torch.dtype, device: str) -> str | None:
    """`auto`: eager attention for bf16 on CPU, where PyTorch's SDPA kernel is slower than eager's
    batched matmuls (measured in bench/ifd_throughput.py); transformers' default elsewhere."""
    if attn_implementation != "auto":
        return attn_implementation
    return "eager" if device == "cpu" and dtype == torch.bfloat16 else None


def _scales_logits(config: Any) -> bool:
    """Models whose head output is post-processed (soft-capping, scaling) take the plain path."""
    return any(
        getattr(config, k, None) not in (None, 1.0)
        for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")
    )


def pad_id_for(tokenizer: Any) -> int:
    """Padding only fills the batch (its labels are -100): pad, else eos, else any id."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _mean(t: torch.Tensor) -> float | None:
    return float(t.double().mean()) if t.numel() else None


def ifd_from_losses(
    l_aq: float | None, l_q: float | None, l_a: float | None, form: str = "loss"
) -> dict:
    """The formulas, in one place. Returns ifd, ic_ifd and a reason when one is null."""
    if form not in ("loss", "ppl"):
        raise ValueError(f"unknown IFD form {form!r}; valid: loss, ppl")
    f = math.exp if form == "ppl" else (lambda v: v)
    out: dict[str, Any] = {"ifd": None, "ic_ifd": None, "ifd_reason": None}
    if l_aq is None or l_a is None:
        out["ifd_reason"] = "answer has fewer than 2 tokens"
        return out
    if f(l_a) == 0:
        out["ifd_reason"] = "L(A) is 0"
        return out
    out["ifd"] = f(l_aq) / f(l_a)
    if l_q is None:
        out["ifd_reason"] = "query of 1 token: L(Q) undefined"
    elif f(l_q) == 0:
        out["ifd_reason"] = "L(Q) is 0"
    else:
        out["ic_ifd"] = out["ifd"] / f(l_q)
    return out


class IFDScorer:
    """Scores records with a causal LM loaded through transformers."""

    def __init__(
        self,
        path: str,
        dtype: str = "auto",
        max_length: int = 2048,
        token_budget: int = 1024,
        form: str = "loss",
        device: str | None = None,
        attn_implementation: str = "auto",
        compile_loss: bool = True,
        device_map: str | None = None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from engines.precision import torch_dtype

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.pad_id = pad_id_for(self.tokenizer)
        dt = torch_dtype(dtype)
        attn = attention_for(attn_implementation, dt, self.device)
        kwargs: dict[str, Any] = {"attn_implementation": attn} if attn else {}
        # A scorer too large for one GPU is split layer by layer over every visible GPU
        # (accelerate's device_map); the inputs then go to the device of the embeddings.
        shard = bool(device_map) and self.device != "cpu"
        if shard:
            kwargs["device_map"] = device_map
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dt, **kwargs)
        self.loss_fn = FusedCrossEntropy() if compile_loss else token_cross_entropy
        if shard:
            self.device = str(self.model.get_input_embeddings().weight.device)
        else:
            self.model.to(self.device)
        self.model.eval()
        self.max_length = max_length
        self.token_budget = token_budget
        self.form = form
        self.tokens_scored = 0

    @torch.inference_mode()
    def score(self, records: list[Record]) -> list[dict]:
        toks = [
            tokenise(self.tokenizer, query_text(r), r.get("output") or "", self.max_length)
            for r in records
        ]
        loss_x = self._batched([t.x for t in toks])
        loss_a = self._batched([t.a for t in toks])
        out = []
        for r, t, lx, la in zip(records, toks, loss_x, loss_a):
            res = self._one(r, t, lx, la)
            out.append(res)
        return out

    def _one(self, record: Record, t: Tokenised, lx: torch.Tensor, la: torch.Tensor) -> dict:
        base = {
            "q_tokens": t.n_q,
            "a_tokens": len(t.a),
            "truncated": t.truncated,
            "boundary_fallback": t.boundary_fallback,
        }
        if not (record.get("output") or "").strip():
            return {**base, **_nulls(), "ifd_reason": "empty output"}
        if t.n_q >= len(t.x):
            return {**base, **_nulls(), "ifd_reason": "query fills the cutoff"}
        # lx[k] scores token k+1 of X: Q positions are tokens 1..n_Q-1, A positions n_Q..end.
        l_q = _mean(lx[: t.n_q - 1])
        l_aq = _mean(lx[t.n_q - 1 :])
        l_a = _mean(la)
        res = {"loss_a_given_q": l_aq, "loss_q": l_q, "loss_a": l_a}
        res.update(ifd_from_losses(l_aq, l_q, l_a, self.form))
        return {**base, **res}

    def _batched(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        """Length-sorted batches under a token budget, so padding stays small."""
        out: list[torch.Tensor | None] = [None] * len(seqs)
        for i, s in enumerate(seqs):
            if len(s) < 2:  # nothing to predict
                out[i] = torch.empty(0)
        order = sorted((i for i in range(len(seqs)) if out[i] is None), key=lambda i: -len(seqs[i]))
        batch: list[int] = []
        for i in order + [None]:  # type: ignore[list-item]
            if i is not None and (
                not batch or (len(batch) + 1) * len(seqs[batch[0]]) <= self.token_budget
            ):
                batch.append(i)
                continue
            if batch:
                for j, loss in zip(
                    batch,
                    _token_losses(
                        self.model, [seqs[j] for j in batch], self.pad_id, self.device, self.loss_fn
                    ),
                ):
                    out[j] = loss
                self.tokens_scored += sum(len(seqs[j]) for j in batch)
            batch = [i] if i is not None else []
        return out  # type: ignore[return-value]

    def close(self) -> None:
        # Dropping the reference is not enough for the next engine: the weights stay in
        # PyTorch's cache (and in any cycle holding them) until freed.
        from engines.memory import free_gpu_memory

        self.model = None
        free_gpu_memory()


class EngineIFDScorer(IFDScorer):
    """The same scores from a generation engine's prompt log-probabilities (vLLM): a model too
    large for one device is scored by the engine already loaded and sharded for generation, and
    no second copy of it is loaded. The tokenisation and the formulas are IFDScorer's."""

    def __init__(
        self, path: str, engine: Any, max_length: int = 2048, form: str = "loss", **_: Any
    ):
        from transformers import AutoTokenizer

        if not hasattr(engine, "prompt_logprobs"):
            used = getattr(engine, "description", None) or f"the {engine.name} engine"
            raise ConfigError(
                f"metrics.ifd.backend=engine needs an engine that returns prompt "
                f"log-probabilities (engine=vllm, one engine or replicas); {used} "
                f"({type(engine).__name__}) does not: use metrics.ifd.backend=transformers"
            )
        self.engine = engine
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # A prompt must leave the engine room for the one token it generates.
        self.max_length = min(max_length, int(getattr(engine, "max_model_len", 0) or 1e9) - 1)
        self.form = form
        self.tokens_scored = 0

    def _batched(self, seqs: list[list[int]]) -> list[torch.Tensor]:
        logprobs = self.engine.prompt_logprobs(seqs)
        self.tokens_scored += sum(len(s) for s in seqs)
        return [-torch.tensor(lp, dtype=torch.float32) for lp in logprobs]

    def close(self) -> None:  # the engine belongs to the pool
        self.engine = None


def _nulls() -> dict:
    return {"loss_a_given_q": None, "loss_q": None, "loss_a": None, "ifd": None, "ic_ifd": None}


@dataclass
class IFDConfig(MetricConfig):
    model: Any = None  # null: the run's model; a conf/model name; a model mapping
    dtype: str = "auto"  # auto (bf16 on GPUs / CPUs with native bf16, else fp32) | float32 | ...
    attn_implementation: str = "auto"  # auto (eager for bf16 on CPU) | sdpa | eager | ...
    compile_loss: bool = True  # fuse the fp32 loss with torch.compile; false = eager
    device_map: Any = None  # null: one device; auto: split over every visible GPU (accelerate)
    backend: str = "transformers"  # transformers | engine (the vLLM engine's prompt logprobs)
    max_length: int = 2048  # cutoff of X = Q + "\n" + A and of A alone
    token_budget: int = 1024  # tokens per forward batch, padding included
    form: str = "loss"  # loss | ppl (exp of each loss)
    missing_output: str = "error"  # error | skip: records without an output
    chunk_size: int = 256  # records per cached chunk

    def __post_init__(self) -> None:
        from core.schemas import one_of

        one_of(self.form, "form", ("loss", "ppl"))
        one_of(self.backend, "backend", ("transformers", "engine"))
        one_of(self.missing_output, "missing_output", ("error", "skip"))


@METRICS.register()
class IFDMetric(Metric):
    """IFD and IC-IFD (SPEC §5) from one causal LM's losses; cached by the scorer's identity, the
    resolved dtype, the form, the cutoff and the exact (Q, A) texts."""

    name = "ifd"
    dtype_field = "dtype"
    role_field = "model"
    Config = IFDConfig
    order = 30
    fields = (
        Field("ifd", higher_is_better=True, filter="ifd", descending=True),
        Field("ic_ifd", higher_is_better=True, filter="ic_ifd", descending=True),
        Field("loss_q", filter="instruction_loss", descending=False),
        Field("q_tokens", sample=False),
        Field("instruction_tokens", filter="length", descending=False, sample=False),
    )
    stats = (
        Stat("ifd_mean", higher_is_better=True, headline=True, of="ifd"),
        Stat(
            "ic_ifd_mean",
            higher_is_better=True,
            headline=True,
            label="mean IC-IFD",
            per_round=True,
            of="ic_ifd",
        ),
        Stat("loss_q_mean", of="loss_q"),
        Stat("q_tokens_mean"),
        Stat("instruction_tokens_mean"),
        Stat("ifd_null", higher_is_better=False),
        Stat("ifd_above_1"),
        Stat("truncated", higher_is_better=False),
        Stat("skipped_no_output", higher_is_better=False),
    )
    # Numerically equivalent settings (attention kernel, loss fusion, batching) and the ones the
    # key holds resolved (model identity, dtype).
    key_excludes = (
        "model",
        "dtype",
        "attn_implementation",
        "compile_loss",
        "device_map",
        "token_budget",
        "chunk_size",
        "missing_output",
    )

    @classmethod
    def dtype_setting(cls, cfg: Any, run_cfg: Any) -> tuple[Any, str] | None:
        """With `backend=engine` the scorer is the generation engine, in the engine's format
        (`engine.dtype`, else the scorer model's own `dtype`), and `metrics.ifd.dtype` is unused."""
        if cfg.backend != "engine":
            return super().dtype_setting(cfg, run_cfg)
        from core.config import role_model

        model_cfg = role_model(run_cfg, cfg.model, "metrics.ifd.model")
        own = model_cfg.get("engine") or {}
        if own.get("dtype"):
            return own.get("dtype"), f"{model_cfg.get('role') or 'model'}.engine.dtype"
        engine = run_cfg.get("engine") or {}
        if engine.get("dtype"):
            return engine.get("dtype"), "engine.dtype"
        return model_cfg.get("dtype"), f"{model_cfg.get('role') or 'model'}.dtype"

    def score(self, set_name: str, records: list[Record]) -> dict[str, dict]:
        from engines.models import resolve_model_path
        from engines.pool import model_identity
        from engines.precision import resolve_dtype

        cfg = self.cfg
        with_output = [r for r in records if (r.get("output") or "").strip()]
        missing = len(records) - len(with_output)
        if missing and cfg.missing_output == "error":
            raise DataError(
                f"score: {missing} of {len(records)} records in {set_name} have no output, "
                "which IFD needs; run the respond stage first (stages=[...,respond,score]) or set "
                "metrics.ifd.missing_output=skip"
            )
        model_cfg = self.ctx.role(cfg.model, "metrics.ifd.model")
        dtype = resolve_dtype(cfg.dtype, what="metrics.ifd.dtype")

        def load() -> IFDScorer:
            return IFDScorer(
                resolve_model_path(model_cfg, self.ctx.models_dir),
                dtype=dtype,
                max_length=int(cfg.max_length),
                token_budget=int(cfg.token_budget),
                form=cfg.form,
                attn_implementation=cfg.attn_implementation,
                compile_loss=bool(cfg.compile_loss),
                device_map=cfg.device_map,
            )

        by_id = {r["id"]: r for r in with_output}

        engine_scorer: list[EngineIFDScorer] = []  # built at the first chunk that misses

        def compute(ids: list[str]) -> list[dict]:
            if cfg.backend != "engine":
                return self.ctx.model("ifd", load).score([by_id[i] for i in ids])
            if not engine_scorer:  # the pool's engine for this model, shared with generation
                engine_scorer.append(
                    EngineIFDScorer(
                        resolve_model_path(model_cfg, self.ctx.models_dir),
                        self.ctx.engine_for(model_cfg),
                        max_length=int(cfg.max_length),
                        form=cfg.form,
                    )
                )
            return engine_scorer[0].score([by_id[i] for i in ids])

        if cfg.backend == "engine":  # the engine computes in the model's own dtype
            dtype = resolve_dtype(model_cfg.get("dtype"), what=f"{model_cfg.name}.dtype")
        payload = {
            **self.cache_key(),
            "model": model_identity(model_cfg),
            "dtype": dtype,
            "items": {i: (query_text(r), r["output"]) for i, r in by_id.items()},
        }
        rows = self.ctx.cache.run(
            "ifd", payload, list(by_id), compute, int(cfg.chunk_size), desc=f"{set_name} ifd"
        )
        # The length baseline counts the instruction's tokens only (the reference code's
        # select_data.py), with the scorer's tokenizer: no model load, so not cached.
        if rows:
            tok = self._tokenizer(resolve_model_path(model_cfg, self.ctx.models_dir))
            for i, row in rows.items():
                ids = tok(by_id[i]["instruction"], add_special_tokens=False).input_ids
                row["instruction_tokens"] = len(ids)
        return rows

    def _tokenizer(self, path: str) -> Any:
        """The scorer's tokenizer, loaded once per stage (score runs once per set)."""
        if getattr(self, "_tok", (None, None))[0] != path:
            from transformers import AutoTokenizer

            self._tok = (path, AutoTokenizer.from_pretrained(path))
        return self._tok[1]

    def summarize(self, set_name, records, rows) -> dict[str, Any]:
        """From its arguments alone: the records without an output are the skipped ones."""
        vals = list(rows.values())
        return {
            "model": self.ctx.role(self.cfg.model, "metrics.ifd.model").name,
            "form": self.cfg.form,
            "skipped_no_output": sum(not (r.get("output") or "").strip() for r in records),
            "ifd_mean": mean([d["ifd"] for d in vals]),
            "ic_ifd_mean": mean([d["ic_ifd"] for d in vals]),
            "loss_q_mean": mean([d["loss_q"] for d in vals]),
            "q_tokens_mean": mean([d["q_tokens"] for d in vals]),
            "instruction_tokens_mean": mean([d.get("instruction_tokens") for d in vals]),
            "ifd_null": sum(d["ifd"] is None for d in vals),
            "ifd_above_1": sum((d["ifd"] or 0) > 1 for d in vals),
            "truncated": sum(bool(d["truncated"]) for d in vals),
        }
