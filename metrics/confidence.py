"""Top-1 token confidence (SPEC §5): under each record's evolution prompt, the probability of the
top-1 token at each of the first k generated positions (greedy). The paper reads a higher top-1 mass
in larger models as overconfidence that narrows what they generate."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.records import Record
from engines.base import Generation, Sampling
from metrics.base import METRICS, Field, Metric, MetricConfig, Stat

BINS = 20  # histogram over [0, 1] for plots


def confidence_record(gen: Generation, positions: int) -> dict:
    lps = (gen.top1_logprobs or [])[:positions]
    probs = [math.exp(lp) for lp in lps]
    return {
        "top1_probs": probs,
        "top1_mean": sum(probs) / len(probs) if probs else None,
    }


def confidence_summary(results: list[dict]) -> dict[str, Any]:
    means = [r["top1_mean"] for r in results if r.get("top1_mean") is not None]
    every = [p for r in results for p in r.get("top1_probs") or []]
    hist, _ = np.histogram(every, bins=BINS, range=(0.0, 1.0))
    return {
        "mean": float(np.mean(means)) if means else None,
        "scored": len(means),
        "failed": len(results) - len(means),
        "histogram": hist.tolist(),
        "histogram_bins": BINS,
    }


@dataclass
class ConfidenceConfig(MetricConfig):
    positions: int = 5  # first k generated tokens


@METRICS.register()
class ConfidenceMetric(Metric):
    """Top-1 probabilities under each record's evolution prompt, from the run's own model (the
    evolver that wrote the record); records without an evolution prompt are skipped."""

    name = "confidence"
    Config = ConfidenceConfig
    order = 11
    uses_evolver = True
    fields = (
        Field("top1_mean", higher_is_better=False, label="top-1 probability"),
        Field(
            "top1_probs",
            label="probability of the top-1 token (first 5 positions)",
            plot="kde",
            sample=False,
        ),
    )
    stats = (
        Stat(
            "mean",
            higher_is_better=False,
            headline=True,
            label="top-1 probability",
            scaling=True,
            of="top1_mean",
        ),
        Stat("scored"),
        Stat("failed", higher_is_better=False),
    )

    def engine_model(self) -> Any:
        return self.ctx.role(None, "model")  # the evolver

    def score(self, set_name: str, records: list[Record]) -> dict[str, dict]:
        k = int(self.cfg.positions)
        items = list(self.evolution_prompts(records).items())
        if not items:
            return {}
        params = Sampling(temperature=0.0, max_tokens=k, top1_logprobs=k)
        model = self.ctx.role(None, "model")
        gens = self.ctx.generate(
            "confidence", model, [(i, p, params) for i, p in items], desc=f"{set_name} top-1"
        )
        return {i: confidence_record(gens[i], k) for i, _ in items}

    def summarize(self, set_name, records, rows) -> dict:
        if not rows:
            return {"skipped": "no evolution prompts (records were not evolved)"}
        return confidence_summary(list(rows.values()))
