"""Top-1 token confidence (SPEC §5): under each record's evolution prompt, the probability of the
top-1 token at each of the first k generated positions (greedy). The paper reads a higher top-1 mass
in larger models as overconfidence that narrows what they generate."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from engines.base import Generation

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
