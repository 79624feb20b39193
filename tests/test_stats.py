"""The statistics behind the verdict, against closed forms and by simulation (reporting.stats)."""

from __future__ import annotations

import numpy as np
import pytest

from reporting import stats
from reporting.stats import Sample


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_bootstrap_ci_of_a_bernoulli_mean_matches_the_wilson_interval(p):
    rng = np.random.default_rng(7)
    x = (rng.random(600) < p).astype(float)
    boot = stats.interval(Sample.of(x), seed=1)
    wil = stats.wilson(int(x.sum()), len(x))
    assert boot.value == pytest.approx(x.mean())
    assert boot.low == pytest.approx(wil.low, abs=0.012)
    assert boot.high == pytest.approx(wil.high, abs=0.012)


def test_wilson_interval_closed_form():
    # 8 successes in 10: the textbook 95% Wilson interval.
    ci = stats.wilson(8, 10)
    assert (round(ci.low, 4), round(ci.high, 4)) == (0.4902, 0.9433)
    assert stats.wilson(0, 20).low == 0.0 and stats.wilson(20, 20).high == 1.0


def test_holm_adjusted_p_values():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert stats.holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])  # monotone, capped at 1


def test_a_ratio_metric_pools_numerators_and_denominators():
    # IFEval's instruction level: (followed, instructions) per prompt, pooled as lm-eval does.
    s = Sample.of([2, 0, 3], [2, 1, 4])
    assert s.value == pytest.approx(5 / 7)
    assert not s.binary and Sample.of([1, 0, 1]).binary


def test_seeds_widen_the_interval_when_the_seeds_disagree():
    """Two-way bootstrap: a run-to-run (seed) shift is part of the uncertainty; pooling the
    seeds' items as if they were more items would hide it."""
    rng = np.random.default_rng(3)
    base = rng.random((400, 1))
    seeds = np.hstack([base + 0.0, base + 0.3, base + 0.6])
    two_way = stats.interval(Sample.of(seeds))
    pooled = stats.interval(Sample.of(seeds.reshape(-1)))
    assert two_way.value == pytest.approx(pooled.value)
    assert two_way.high - two_way.low > 0.3
    assert pooled.high - pooled.low < 0.1


def test_paired_test_finds_a_known_effect_and_its_size():
    rng = np.random.default_rng(11)
    b = rng.normal(0.5, 1.0, 300)
    a = b + 0.05 + rng.normal(0, 0.05, 300)
    d = stats.paired(Sample.of(a), Sample.of(b))
    assert d.test == "paired permutation"
    assert d.p < 0.001
    assert d.diff.low < 0.05 < d.diff.high and d.diff.low > 0
    # The same data unpaired: the items' spread swamps the small shift.
    u = stats.unpaired(Sample.of(a), Sample.of(b))
    assert u.p > 0.01 and u.diff.low < 0 < u.diff.high


def test_mcnemar_for_one_seed_pass_fail():
    a = np.array([1] * 30 + [0] * 70, dtype=float)
    b = np.array([0] * 30 + [0] * 70, dtype=float)
    d = stats.paired(Sample.of(a), Sample.of(b))
    assert d.test == "McNemar exact"
    assert d.p == pytest.approx(2 * 0.5**30)  # 30 discordant pairs, all one way
    assert stats.paired(Sample.of(a), Sample.of(a)).p == 1.0


def _false_positive_rate(make, test, sims: int) -> float:
    rng = np.random.default_rng(2024)
    hits = 0
    for k in range(sims):
        a, b = make(rng)
        hits += test(Sample.of(a), Sample.of(b), iters=200, permutations=999, seed=k).p < 0.05
    return hits / sims


def test_paired_permutation_false_positive_rate_is_near_five_percent():
    def make(rng):
        item = rng.normal(0, 1, 80)  # items differ a lot, the arms not at all
        return item + rng.normal(0, 0.5, 80), item + rng.normal(0, 0.5, 80)

    rate = _false_positive_rate(make, stats.paired, 500)
    assert 0.025 <= rate <= 0.08, rate


def test_mcnemar_false_positive_rate_stays_at_or_below_five_percent():
    def make(rng):
        p = rng.random(150)  # each item's difficulty, shared by both arms
        return (rng.random(150) < p).astype(float), (rng.random(150) < p).astype(float)

    rate = _false_positive_rate(make, stats.paired, 500)
    assert 0.01 <= rate <= 0.065, rate  # exact McNemar is slightly conservative


def test_unpaired_permutation_false_positive_rate_is_near_five_percent():
    def make(rng):
        return rng.exponential(1.0, 60), rng.exponential(1.0, 70)

    rate = _false_positive_rate(make, stats.unpaired, 500)
    assert 0.025 <= rate <= 0.08, rate


def test_the_same_data_gives_the_same_answer():
    rng = np.random.default_rng(5)
    a, b = Sample.of(rng.random(50)), Sample.of(rng.random(50))
    assert stats.paired(a, b) == stats.paired(a, b)
    assert stats.interval(a) == stats.interval(a)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="same items"):
        stats.paired(Sample.of([1, 0]), Sample.of([1, 0, 1]))
    with pytest.raises(ValueError, match="no item"):
        stats.interval(Sample.of([]))
    with pytest.raises(ValueError, match="no trial"):
        stats.wilson(0, 0)


def test_large_unpaired_sets_use_welch_and_agree_with_permutation():
    rng = np.random.default_rng(9)
    a, b = rng.exponential(1.0, 12000), rng.exponential(1.0, 12000) + 0.02
    big = stats.unpaired(Sample.of(a), Sample.of(b))
    assert big.test == "Welch t"
    rng = np.random.default_rng(9)
    perm = stats.label_permutation(Sample.of(a), Sample.of(b), 2000, rng)
    assert big.p == pytest.approx(perm, abs=0.02)
    assert stats.unpaired(Sample.of(a[:500]), Sample.of(b[:500])).test == "permutation"


def test_with_seeds_the_p_value_carries_the_seed_swing_as_the_interval_does():
    """Two seeds of arm A straddle arm B (one 5 points below, one 25 above): the items agree
    within each seed, but the seeds do not; neither the interval nor the test may call that an
    effect."""
    rng = np.random.default_rng(4)
    base = rng.random((300, 1))
    noise = rng.normal(0, 0.01, (300, 2))
    a = np.hstack([base - 0.05, base + 0.25]) + noise
    b = np.hstack([base, base]) + rng.normal(0, 0.01, (300, 2))
    d = stats.paired(Sample.of(a), Sample.of(b))
    assert d.test == "two-way bootstrap"
    assert d.diff.low < 0 < d.diff.high and d.p > 0.05
    # Seeds that agree: a real shift is still found.
    a = np.hstack([base + 0.1, base + 0.1]) + noise
    assert stats.paired(Sample.of(a), Sample.of(b)).p < 0.01


def test_a_non_finite_difference_is_no_evidence():
    assert stats.sign_flip(np.array([np.nan, 1.0]), 2.0, 99, np.random.default_rng(0)) == 1.0
    a, b = Sample.of([np.nan, 1.0, 2.0]), Sample.of([0.0, 1.0, 2.0])
    assert stats.label_permutation(a, b, 99, np.random.default_rng(0)) == 1.0
