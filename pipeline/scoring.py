"""The `score` and `filter` stages: every enabled metric of SPEC §5 for each set, per record into
`scores.jsonl` and as set summaries into `metrics.json`; then selection into `selected.jsonl`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from engines.base import Sampling
from engines.models import resolve_model_path
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

    def score_set(self, name: str, records: list[Record]) -> dict[str, dict]:
        scores: dict[str, dict] = {r["id"]: {"id": r["id"]} for r in records}
        summary: dict[str, Any] = {"records": len(records)}
        steps: list[tuple[str, Callable]] = [
            ("judge", self._judge),
            ("confidence", self._confidence),
            ("diversity", self._diversity),
            ("ifd", self._ifd),
            ("reward", self._reward),
        ]
        for key, fn in steps:
            if self.m[key].enabled:
                summary[key] = fn(name, records, scores)
        write_jsonl_atomic(self.run.dir / name / "scores.jsonl", scores.values())
        self.run.add_metrics(name, "score", summary)
        return scores

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
            gens = gen([(r["id"], judge.judge_prompt(r, templates[kind])) for r in records])
            values = [parse(gens[r["id"]].text) for r in records]
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
            emb = diversity.embed([texts[i] for i in ids], cfg.model, int(cfg.batch_size))
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
        scorer_box: list = []

        def compute(ids: list[str]) -> list[dict]:
            if not scorer_box:
                from metrics.ifd import IFDScorer

                self.run.pool.release()  # one model in memory at a time
                path = resolve_model_path(model_cfg, self.cfg.models_dir)
                scorer_box.append(
                    IFDScorer(
                        path,
                        dtype=cfg.dtype,
                        max_length=int(cfg.max_length),
                        token_budget=int(cfg.token_budget),
                        form=cfg.form,
                        attn_implementation=cfg.attn_implementation,
                        compile_loss=bool(cfg.compile_loss),
                    )
                )
            return scorer_box[0].score([by_id[i] for i in ids])

        by_id = {r["id"]: r for r in with_output}
        payload = {
            "model": model_identity(model_cfg),
            "dtype": cfg.dtype,
            "form": cfg.form,
            "max_length": int(cfg.max_length),
            "items": {i: (query_text(r), r["output"]) for i, r in by_id.items()},
        }
        res = self.run.cache.run(
            "ifd", payload, list(by_id), compute, int(cfg.chunk_size), desc=f"{name} ifd"
        )
        if scorer_box:
            scorer_box[0].close()
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
        box: list = []

        def compute(ids: list[str]) -> list[dict]:
            if not box:
                from metrics.reward import RewardScorer

                self.run.pool.release()
                box.append(
                    RewardScorer(
                        cfg.model, kind=cfg.kind, dtype=cfg.dtype, batch_size=int(cfg.batch_size)
                    )
                )
            return [{"reward": s} for s in box[0].score([pairs[i] for i in ids])]

        payload = {"model": cfg.model, "kind": cfg.kind, "dtype": cfg.dtype, "pairs": pairs}
        res = self.run.cache.run(
            "reward", payload, list(pairs), compute, 256, desc=f"{name} reward"
        )
        if box:
            box[0].close()
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
