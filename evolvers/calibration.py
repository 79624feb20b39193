"""Temperature calibration: the overconfidence ablation (the paper's mechanism, as a control).

The paper reads a larger evolver's higher top-1 probability as overconfidence that narrows what it
writes. This sets an evolver's sampling temperature so that its *sampling* distribution is as
confident as a target: over round 1's evolution prompts for a dev batch of seeds, the mean
probability of the top-1 token at the first k generated positions (greedy positions, the same
probe as the top-1 confidence metric) under temperature T,

    p_T(top-1) = exp(l_1 / T) / sum_v exp(l_v / T),

is brought to the target by bisection (it falls as T rises). The target is a number, or another
model's value at its own `generation.evolve` temperature (the SLM's, for "a temperature-matched
LLM"). Top-p is not part of the match: both sides keep `generation.evolve.top_p`.

The engines return the `top_logprobs` largest log-probabilities per position, not the whole
vocabulary. The tail beyond them holds the rest of the mass (1 - the returned probabilities) over
the rest of the vocabulary; its shape is extrapolated from the returned ones: a power law in rank
(log p linear in log rank) fitted to the lower half of the returned tokens, scaled to the tail's
mass. tests/test_calibration.py measures the error against the whole vocabulary, on synthetic
distributions and on the bundled model (within 0.01 for temperatures up to 1, growing above).
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

from core.errors import ConfigError
from engines.base import Sampling

log = logging.getLogger(__name__)


BIN_RATIO = 1.02  # the tail is summed over rank bins this much wider each


@functools.lru_cache(maxsize=65536)
def _tail(tops: tuple[float, ...], vocab: int) -> tuple[tuple[float, float], ...]:
    """The tail beyond `tops` as (log-probability, log-count) rank bins: ranks k+1..vocab with
    log p linear in log rank (the slope fitted to the lower half of `tops`), scaled so the tail
    holds the mass the returned tokens leave (1 - their sum)."""
    k = len(tops)
    mass = 1.0 - sum(math.exp(lp) for lp in tops)
    if mass <= 1e-12:
        return ()
    if vocab <= k:  # the vocabulary is not known: the tail as tokens at the last probability
        return ((tops[-1], math.log(mass) - tops[-1]),)
    ranks = range(k // 2 + 1, k + 1)
    xs = [math.log(r) for r in ranks]
    ys = [tops[r - 1] for r in ranks]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = max(0.0, -sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var) if var else 0.0
    edges = [float(k)]
    while edges[-1] < vocab:
        edges.append(min(float(vocab), max(edges[-1] + 1, edges[-1] * BIN_RATIO)))
    shape = [  # (log relative probability, count) per bin
        (-slope * math.log((lo + hi) / 2 + 0.5), hi - lo) for lo, hi in zip(edges, edges[1:])
    ]
    top = max(s for s, _ in shape)
    log_scale = math.log(mass) - math.log(sum(n * math.exp(s - top) for s, n in shape)) - top
    return tuple((log_scale + s, math.log(n)) for s, n in shape)


def top1_at(tops: list[float], temperature: float, vocab: int) -> float:
    """p_T of the top-1 token at one position from its largest log-probabilities (descending)
    and the vocabulary size (for the tail's extent)."""
    if not tops:
        raise ValueError("no log-probabilities")
    t = float(temperature)
    scaled = [lp / t for lp in tops]
    scaled += [lc + lp / t for lp, lc in _tail(tuple(tops), int(vocab))]
    m = max(scaled)
    log_z = m + math.log(sum(math.exp(x - m) for x in scaled))
    return math.exp(tops[0] / t - log_z)


def mean_top1(probes: list[tuple[list[list[float]], int]], temperature: float) -> float:
    """The mean over prompts (each its positions' top log-probabilities and the vocabulary size)
    of the mean over positions of `top1_at`."""
    per_prompt = [
        sum(top1_at(pos, temperature, vocab) for pos in positions) / len(positions)
        for positions, vocab in probes
        if positions
    ]
    if not per_prompt:
        raise ValueError("no probe has a log-probability")
    return sum(per_prompt) / len(per_prompt)


def solve_temperature(
    probes: list[tuple[list[list[float]], int]],
    target: float,
    lo: float,
    hi: float,
    iters: int = 60,
) -> tuple[float, bool]:
    """The temperature in [lo, hi] whose `mean_top1` is `target`, and whether a bound was hit
    (the target is out of reach in that range)."""
    p_lo, p_hi = mean_top1(probes, lo), mean_top1(probes, hi)
    if target >= p_lo:
        return lo, True
    if target <= p_hi:
        return hi, True
    a, b = lo, hi
    for _ in range(iters):
        mid = (a + b) / 2
        if mean_top1(probes, mid) > target:
            a = mid
        else:
            b = mid
    return (a + b) / 2, False


def probe(ctx: Any, scenario: Any, seeds: list, model_cfg: Any, cal: Any) -> list:
    """Top log-probabilities at the first `cal.positions` greedy positions of round 1's prompts
    for the dev seeds, from `model_cfg` on the run's engine (cached)."""
    prompts = scenario.first_prompts(seeds[: int(cal.dev_size)])
    if prompts is None:
        raise ConfigError(
            f"calibration: scenario {scenario.name} gives no round-1 prompts to probe "
            "(Scenario.first_prompts); calibration.enabled=false"
        )
    k = int(cal.positions)
    params = Sampling(
        temperature=0.0, max_tokens=k, top1_logprobs=k, top_logprobs=int(cal.top_logprobs)
    )
    gens = ctx.generate(
        "calibration",
        model_cfg,
        [(i, p, params) for i, p in prompts],
        desc=f"calibration: {model_cfg.name} top-{cal.top_logprobs}",
    )
    return [(gens[i].top_logprobs or [], gens[i].vocab_size) for i, _ in prompts]


def calibrate(ctx: Any, scenario: Any, seeds: list, cfg: Any) -> dict[str, Any]:
    """The calibrated evolution temperature and what it was found from (for metrics.json)."""
    cal = cfg.calibration
    evolve_t = float(cfg.generation.evolve.temperature)
    if evolve_t <= 0:
        raise ConfigError(
            "calibration: generation.evolve.temperature is 0 (greedy), which has no top-1 "
            "probability below 1 to match; set a sampling temperature"
        )
    own = probe(ctx, scenario, seeds, ctx.role(None, "model"), cal)
    if cal.target_model is not None:
        target_cfg = ctx.role(cal.target_model, "calibration.target_model")
        target = mean_top1(probe(ctx, scenario, seeds, target_cfg, cal), evolve_t)
        source = str(target_cfg.name)
    else:
        target, source = float(cal.target), "calibration.target"
    lo, hi = float(cal.min_temperature), float(cal.max_temperature)
    temperature, at_bound = solve_temperature(own, target, lo, hi)
    out = {
        "temperature": round(temperature, 4),
        "temperature_before": evolve_t,
        "target": target,
        "target_from": source,
        "top1_before": mean_top1(own, evolve_t),
        "top1_after": mean_top1(own, temperature),
        "top1_raw": mean_top1(own, 1.0),
        "prompts": len(own),
        "positions": int(cal.positions),
        "at_bound": at_bound,
    }
    if at_bound:
        log.warning(
            "calibration: target top-1 %.3f is out of reach in [%s, %s]; using T=%s",
            target,
            lo,
            hi,
            temperature,
        )
    return out
