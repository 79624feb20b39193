"""The `score` and `filter` stages: every enabled metric of SPEC §5 for each set, per record into
`scores.jsonl` and as set summaries into `metrics.json`; then selection into `selected.jsonl`.

Metrics run metric by metric over all sets, in the order of the models they need, so each model is
loaded once per stage: the generation-based metrics (judges, top-1 confidence) while the engine is
up, then the embedder, then the forward-pass models (IFD scorer, reward model)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from engines.base import Sampling
from engines.models import resolve_model_path
from engines.precision import resolve_dtype
from metrics import confidence, diversity, judge
from metrics.filters import select_top_fraction
from metrics.reward import reward_pair, reward_summary
from pipeline.config import model_for_role
from pipeline.engine_pool import model_identity
from pipeline.errors import DataError
from pipeline.records import Record, query_text, write_jsonl_atomic

log = logging.getLogger(__name__)


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


class Scorer:
    """Runs the enabled metrics over one set of records; `run` is the pipeline's Run."""

    def __init__(self, run: Any, scenario: Any):
        self.run = run
        self.cfg = run.cfg
        self.m = run.cfg.metrics
        self.scenario = scenario
        self._models: dict[str, Any] = {}  # forward-pass models, loaded on the first cache miss
        self.load_seconds = 0.0

    def score_sets(self, sets: dict[str, list[Record]]) -> dict[str, dict[str, dict]]:
        """{set name: {id: scores}} for every set; writes each set's scores.jsonl and metrics."""
        scores = {name: {r["id"]: {"id": r["id"]} for r in recs} for name, recs in sets.items()}
        summaries: dict[str, dict[str, Any]] = {n: {"records": len(r)} for n, r in sets.items()}
        steps: list[tuple[str, Callable]] = [
            ("judge", self._judge),
            ("confidence", self._confidence),
            ("diversity", self._diversity),
            ("ifd", self._ifd),
            ("reward", self._reward),
        ]
        try:
            for key, fn in steps:
                if not self.m[key].enabled:
                    continue
                for name, records in sets.items():
                    summaries[name][key] = fn(name, records, scores[name])
                self._close_models()  # before the next metric's model is loaded
        finally:
            self._close_models()
        for name in sets:
            write_jsonl_atomic(self.run.dir / name / "scores.jsonl", scores[name].values())
            self.run.add_metrics(name, "score", summaries[name])
        return scores

    def _model(self, key: str, load: Callable[[], Any]) -> Any:
        """A forward-pass model, loaded once for all sets (the generation engine released first:
        one model in memory at a time)."""
        if key not in self._models:
            self.run.pool.release()
            t0 = time.perf_counter()
            self._models[key] = load()
            self.load_seconds += time.perf_counter() - t0
        return self._models[key]

    def _close_models(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()

    # -- LLM judges -------------------------------------------------------------------------
    def _judge(self, name: str, records: list[Record], scores: dict) -> dict:
        cfg = self.m.judge
        model_cfg = model_for_role(self.cfg, cfg.model)
        templates = judge.load_judge_templates(cfg)
        out: dict[str, Any] = {"model": model_cfg.name}
        for kind, parse in (
            ("complexity", judge.parse_complexity),
            ("difficulty", judge.parse_difficulty),
        ):
            if not cfg[kind]:
                continue
            gen = self.run.generator(
                f"judge_{kind}", model_cfg, self.cfg.generation.greedy, desc=f"{name} {kind}"
            )
            # A judge answers a number or a short label: generating to the run's length limit
            # would cost minutes for nothing.
            cap = min(int(cfg.max_tokens[kind]), int(self.cfg.generation.greedy.max_tokens))
            gens = gen(
                [(r["id"], judge.judge_prompt(r, templates[kind])) for r in records],
                max_tokens=cap,
            )
            values = [parse(gens[r["id"]].text, gens[r["id"]].finish_reason) for r in records]
            for r, v in zip(records, values):
                scores[r["id"]][kind] = v
            if kind == "complexity":
                out["complexity_mean"] = _mean(values)
                out["complexity_failed"] = sum(v is None for v in values)
            else:
                out["difficulty"] = judge.label_counts(values)
        return out

    # -- top-1 confidence under the evolution prompt ------------------------------------------
    def _confidence(self, name: str, records: list[Record], scores: dict) -> dict:
        k = int(self.m.confidence.positions)
        items = [(r["id"], p) for r in records if (p := self._evolution_prompt(r)) is not None]
        if not items:
            return {"skipped": "no evolution prompts (records were not evolved)"}
        params = Sampling(temperature=0.0, max_tokens=k, top1_logprobs=k)
        gens = self.run.pool.generate(
            "confidence", self.cfg.model, [(i, p, params) for i, p in items], desc=f"{name} top-1"
        )
        results = []
        for i, _ in items:
            res = confidence.confidence_record(gens[i], k)
            scores[i]["top1_mean"] = res["top1_mean"]
            scores[i]["top1_probs"] = res["top1_probs"]
            results.append(res)
        return confidence.confidence_summary(results)

    def _evolution_prompt(self, record: Record):
        meta = record.get("meta", {})
        if "method" not in meta or "parent_instruction" not in meta:
            return None
        fn = getattr(self.scenario, "evolution_prompt", None)
        return fn(record) if fn else None

    # -- diversity ------------------------------------------------------------------------------
    def _diversity(self, name: str, records: list[Record], scores: dict) -> dict:
        import numpy as np

        cfg = self.m.diversity
        texts = {r["id"]: query_text(r) for r in records}

        def compute(ids: list[str]) -> list[dict]:
            embedder = self._model("embed", lambda: diversity.Embedder(cfg.model))
            emb = embedder.encode([texts[i] for i in ids], int(cfg.batch_size))
            return [{"e": row.tolist()} for row in emb]

        raw = self.run.cache.run(
            "embed",
            {"model": cfg.model, "texts": texts},
            list(texts),
            compute,
            4096,
            desc=f"{name} embed",
        )
        emb = np.asarray([raw[i]["e"] for i in texts], dtype=np.float32)
        res = diversity.diversity_scores(list(texts.values()), cfg, emb=emb)
        for i, d in zip(texts, res):
            scores[i].update(d)
        return {
            "model": cfg.model,
            "nn_l2sq_mean": _mean([d["nn_l2sq"] for d in res]),
            "nn_cosine_mean": _mean([d["nn_cosine"] for d in res]),
            "near_dup_records": sum(d["near_dups"] > 0 for d in res),
            "nn_l2sq": [d["nn_l2sq"] for d in res],  # the distribution, for plots
        }

    # -- IFD / IC-IFD ---------------------------------------------------------------------------
    def _ifd(self, name: str, records: list[Record], scores: dict) -> dict:
        cfg = self.m.ifd
        with_output = [r for r in records if (r.get("output") or "").strip()]
        missing = len(records) - len(with_output)
        if missing and cfg.missing_output == "error":
            raise DataError(
                f"score: {missing} of {len(records)} records in {name} have no output, which IFD "
                "needs; run the respond stage first (stages=[...,respond,score]) or set "
                "metrics.ifd.missing_output=skip"
            )
        model_cfg = model_for_role(self.cfg, cfg.model)
        dtype = resolve_dtype(cfg.dtype, what="metrics.ifd.dtype")

        def load():
            from metrics.ifd import IFDScorer

            return IFDScorer(
                resolve_model_path(model_cfg, self.cfg.models_dir),
                dtype=dtype,
                max_length=int(cfg.max_length),
                token_budget=int(cfg.token_budget),
                form=cfg.form,
                attn_implementation=cfg.attn_implementation,
                compile_loss=bool(cfg.compile_loss),
            )

        def compute(ids: list[str]) -> list[dict]:
            return self._model("ifd", load).score([by_id[i] for i in ids])

        by_id = {r["id"]: r for r in with_output}
        payload = {
            "model": model_identity(model_cfg),
            "dtype": dtype,
            "form": cfg.form,
            "max_length": int(cfg.max_length),
            "items": {i: (query_text(r), r["output"]) for i, r in by_id.items()},
        }
        res = self.run.cache.run(
            "ifd", payload, list(by_id), compute, int(cfg.chunk_size), desc=f"{name} ifd"
        )
        for i, d in res.items():
            scores[i].update(d)
        vals = list(res.values())
        return {
            "model": model_cfg.name,
            "form": cfg.form,
            "skipped_no_output": missing,
            "ifd_mean": _mean([d["ifd"] for d in vals]),
            "ic_ifd_mean": _mean([d["ic_ifd"] for d in vals]),
            "loss_q_mean": _mean([d["loss_q"] for d in vals]),
            "q_tokens_mean": _mean([d["q_tokens"] for d in vals]),
            "ifd_null": sum(d["ifd"] is None for d in vals),
            "ifd_above_1": sum((d["ifd"] or 0) > 1 for d in vals),
            "truncated": sum(bool(d["truncated"]) for d in vals),
        }

    # -- reward -------------------------------------------------------------------------------
    def _reward(self, name: str, records: list[Record], scores: dict) -> dict:
        cfg = self.m.reward
        if not cfg.model:
            raise DataError(
                "metrics.reward.enabled=true needs metrics.reward.model (an HF id or a local "
                "folder of a reward model, e.g. Skywork/Skywork-Reward-Llama-3.1-8B-v0.2)"
            )
        pairs = {
            r["id"]: reward_pair(p, r["instruction"])
            for r in records
            if (p := self._evolution_prompt(r)) is not None
        }
        if not pairs:
            return {"skipped": "no evolution prompts (records were not evolved)"}
        dtype = resolve_dtype(cfg.dtype, what="metrics.reward.dtype")

        def load():
            from metrics.reward import RewardScorer

            return RewardScorer(
                cfg.model, kind=cfg.kind, dtype=dtype, batch_size=int(cfg.batch_size)
            )

        def compute(ids: list[str]) -> list[dict]:
            scorer = self._model("reward", load)
            return [{"reward": s} for s in scorer.score([pairs[i] for i in ids])]

        payload = {"model": cfg.model, "kind": cfg.kind, "dtype": dtype, "pairs": pairs}
        res = self.run.cache.run(
            "reward", payload, list(pairs), compute, 256, desc=f"{name} reward"
        )
        lengths = []
        for i in pairs:
            scores[i]["reward"] = res[i]["reward"]
            lengths.append(len(pairs[i][-1]["content"].split()))
        return {"model": cfg.model, **reward_summary([res[i]["reward"] for i in pairs], lengths)}


def filter_set(run: Any, name: str, records: list[Record], scores: dict[str, dict]) -> dict:
    f = run.cfg.filter
    kept, counts = select_top_fraction(
        records, scores, f.name, float(f.keep_ratio), int(run.cfg.seed), bool(f.drop_ifd_above_1)
    )
    counts["set"] = name
    write_jsonl_atomic(run.dir / "selected.jsonl", kept)
    return kept, counts
