"""Error bars and tests for the study's numbers: bootstrap confidence intervals, paired and
unpaired two-arm tests, the Holm correction and the Wilson interval.

A metric's per-item data is a `Sample`: `num` and `den` of shape (items, seeds), the metric being
`num.sum() / den.sum()` — a plain mean when `den` is all ones (accuracy, pass@1, IFD), a ratio
when it is not (IFEval's instruction-level accuracy: instructions followed over instructions per
prompt). Seeds are the columns of one arm: the same items run by jobs that differ only by seed.

- `interval`: a percentile bootstrap CI; with several seeds, items and seeds are both resampled
  (a two-way bootstrap), so the interval carries both the items' and the seeds' variation.
- `paired`: two arms on the same items (benchmarks). The difference's CI resamples the items
  together (each arm's seeds on their own); the p-value is McNemar's exact test for one-seed
  pass/fail data, a sign-flip permutation test on the items' differences for other one-seed
  data, and with several seeds the two-way bootstrap's own (twice its smaller tail beyond 0),
  so the test and the interval carry the same seed-to-seed variation.
- `unpaired`: two arms on different items (each arm's own evolved records): each resampled on its
  own for the CI, a label permutation test for the p-value (Welch's t-test above 20,000 records,
  where the two agree and relabelling grows with the set: a sweep's comparison runs hundreds).
- `holm`: adjusted p-values over the metrics of one table (family-wise error at `alpha`).
- `wilson`: the binomial CI of a rate (the pairwise judge's win rate).

Everything is seeded: the same data gives the same interval and p-value on every run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
ITERS = 2000  # bootstrap resamples
PERMUTATIONS = 10000
LARGE = 20000  # unpaired sets above this many records in all: Welch's test instead of relabelling
_CHUNK_CELLS = 4_000_000  # resamples are drawn in blocks of about this many numbers


@dataclass
class Sample:
    """One arm's per-item values of one metric: `num`/`den` of shape (items, seeds)."""

    num: np.ndarray
    den: np.ndarray

    @classmethod
    def of(cls, num, den=None) -> Sample:
        n = np.asarray(num, dtype=float)
        if n.ndim == 1:
            n = n[:, None]
        d = np.ones_like(n) if den is None else np.asarray(den, dtype=float).reshape(n.shape)
        return cls(n, d)

    @property
    def items(self) -> int:
        return self.num.shape[0]

    @property
    def seeds(self) -> int:
        return self.num.shape[1]

    @property
    def value(self) -> float:
        return float(self.num.sum() / self.den.sum())

    def seed_values(self) -> np.ndarray:
        """The metric of each seed (column) on its own."""
        return self.num.sum(0) / self.den.sum(0)

    @property
    def binary(self) -> bool:
        return bool(np.all(self.den == 1) and np.all((self.num == 0) | (self.num == 1)))


@dataclass
class Interval:
    value: float
    low: float
    high: float


@dataclass
class Difference:
    """Arm A minus arm B."""

    a: Interval
    b: Interval
    diff: Interval
    p: float
    test: str
    items: int


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _chunks(total: int, cells_per: int) -> list[int]:
    size = max(1, min(total, _CHUNK_CELLS // max(cells_per, 1)))
    return [min(size, total - s) for s in range(0, total, size)]


def _boot(sample: Sample, iters: int, rng: np.random.Generator, items_idx=None) -> np.ndarray:
    """`iters` bootstrap values of the metric; `items_idx` (iters, items) shares the item
    resampling with another arm (paired), else it is drawn here."""
    n, s = sample.num.shape
    out = np.empty(iters)
    pos = 0
    for size in _chunks(iters, n * s):
        idx = (
            items_idx[pos : pos + size] if items_idx is not None else rng.integers(0, n, (size, n))
        )
        if s == 1:
            num = sample.num[:, 0][idx].sum(1)
            den = sample.den[:, 0][idx].sum(1)
        else:
            # Seeds resampled too: each item's sum over the drawn seeds, then the drawn items.
            w = np.stack([np.bincount(r, minlength=s) for r in rng.integers(0, s, (size, s))])
            num_items = sample.num @ w.T  # (items, size)
            den_items = sample.den @ w.T
            num = np.take_along_axis(num_items, idx.T, axis=0).sum(0)
            den = np.take_along_axis(den_items, idx.T, axis=0).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[pos : pos + size] = num / den
        pos += size
    return out


def _percentile(values: np.ndarray, est: float, level: float) -> Interval:
    values = values[np.isfinite(values)]
    if not len(values):
        return Interval(est, est, est)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return Interval(est, float(lo), float(hi))


def interval(sample: Sample, level: float = LEVEL, iters: int = ITERS, seed: int = 0) -> Interval:
    """The metric with its bootstrap CI (items, and seeds when there are several, resampled)."""
    if sample.items == 0:
        raise ValueError("no item to compute an interval over")
    return _percentile(_boot(sample, iters, _rng(seed)), sample.value, level)


def paired(
    a: Sample,
    b: Sample,
    level: float = LEVEL,
    iters: int = ITERS,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> Difference:
    """A vs B on the same items (row i of both is the same benchmark item)."""
    if a.items != b.items:
        raise ValueError(f"paired samples need the same items ({a.items} vs {b.items})")
    if a.items == 0:
        raise ValueError("no item to compare")
    rng = _rng(seed)
    idx = rng.integers(0, a.items, (iters, a.items))
    boot_a, boot_b = _boot(a, iters, rng, idx), _boot(b, iters, rng, idx)
    if a.seeds > 1 or b.seeds > 1:
        # Seeds vary the whole run (training): the p-value comes from the same two-way
        # resampling as the interval, so a seed-to-seed swing is not mistaken for an effect.
        p, test = bootstrap_p(boot_a - boot_b), "two-way bootstrap"
    elif a.binary and b.binary:
        p, test = mcnemar(a.num[:, 0], b.num[:, 0]), "McNemar exact"
    else:
        den = (a.den.sum() + b.den.sum()) / 2
        p = sign_flip(a.num[:, 0] - b.num[:, 0], den, permutations, rng)
        test = "paired permutation"
    return _difference(a, b, boot_a, boot_b, level, p, test, a.items)


def _difference(a, b, boot_a, boot_b, level, p, test, items) -> Difference:
    return Difference(
        a=_percentile(boot_a, a.value, level),
        b=_percentile(boot_b, b.value, level),
        diff=_percentile(boot_a - boot_b, a.value - b.value, level),
        p=p,
        test=test,
        items=items,
    )


def unpaired(
    a: Sample,
    b: Sample,
    level: float = LEVEL,
    iters: int = ITERS,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> Difference:
    """A vs B on different items (records pooled over seeds, one value each)."""
    if a.items == 0 or b.items == 0:
        raise ValueError("no item to compare")
    a, b = _flat(a), _flat(b)
    rng = _rng(seed)
    boot_a, boot_b = _boot(a, iters, rng), _boot(b, iters, rng)
    if a.items + b.items > LARGE and np.all(a.den == 1) and np.all(b.den == 1):
        # Paper-size sets (tens of thousands of records): the permutation distribution of a
        # difference of means is normal to within its own Monte Carlo error; Welch's test gives
        # that p at a fraction of the cost (a sweep's comparison runs hundreds of these).
        from scipy.stats import ttest_ind

        p = float(ttest_ind(a.num[:, 0], b.num[:, 0], equal_var=False).pvalue)
        p, test = (1.0 if not np.isfinite(p) else p), "Welch t"
    else:
        p, test = label_permutation(a, b, permutations, rng), "permutation"
    return _difference(a, b, boot_a, boot_b, level, p, test, a.items + b.items)


def _flat(s: Sample) -> Sample:
    return Sample(s.num.reshape(-1, 1), s.den.reshape(-1, 1)) if s.seeds > 1 else s


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap differences: twice the smaller tail
    beyond 0, with the +1 correction."""
    diffs = diffs[np.isfinite(diffs)]
    if not len(diffs) or np.all(diffs == 0):
        return 1.0
    below = (np.sum(diffs <= 0) + 1) / (len(diffs) + 1)
    above = (np.sum(diffs >= 0) + 1) / (len(diffs) + 1)
    return float(min(1.0, 2 * min(below, above)))


def mcnemar(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided exact McNemar p-value for paired pass/fail outcomes."""
    from scipy.stats import binomtest

    only_a = int(np.sum((a == 1) & (b == 0)))
    only_b = int(np.sum((a == 0) & (b == 1)))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def sign_flip(d: np.ndarray, den: float, permutations: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of sum(d)/den under random sign flips of the items' differences."""
    d = np.asarray(d, dtype=float)
    observed = abs(d.sum()) / den
    if observed == 0 or not np.isfinite(observed):
        return 1.0
    hits = 0
    for size in _chunks(permutations, len(d)):
        signs = rng.integers(0, 2, (size, len(d))) * 2 - 1
        hits += int(np.sum(np.abs(signs @ d) / den >= observed - 1e-12))
    return (hits + 1) / (permutations + 1)


def label_permutation(a: Sample, b: Sample, permutations: int, rng: np.random.Generator) -> float:
    """Two-sided p-value of value(A) - value(B) under random relabelling of the pooled items."""
    num = np.concatenate([a.num[:, 0], b.num[:, 0]])
    den = np.concatenate([a.den[:, 0], b.den[:, 0]])
    n_a, total = a.items, len(num)
    observed = abs(a.value - b.value)
    if observed == 0 or not np.isfinite(observed):
        return 1.0
    hits = 0
    for size in _chunks(permutations, total):
        perm = rng.permuted(np.broadcast_to(np.arange(total), (size, total)), axis=1)
        in_a = perm[:, :n_a]
        in_b = perm[:, n_a:]
        va = num[in_a].sum(1) / den[in_a].sum(1)
        vb = num[in_b].sum(1) / den[in_b].sum(1)
        hits += int(np.sum(np.abs(va - vb) >= observed - 1e-12))
    return (hits + 1) / (permutations + 1)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input's order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def wilson(successes: int, n: int, level: float = LEVEL) -> Interval:
    """The Wilson score interval of a binomial rate."""
    if n <= 0:
        raise ValueError("a rate over no trial has no interval")
    from scipy.stats import norm

    z = float(norm.ppf(1 - (1 - level) / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))
