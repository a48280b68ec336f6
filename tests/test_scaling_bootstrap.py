"""Bootstrap resampling and percentile intervals against textbook results."""

import numpy as np
import pytest

from scaling import bootstrap


def test_interval_of_a_mean_matches_the_normal_theory_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 400)
    samples = bootstrap.bootstrap(lambda i: {"mean": x[i].mean()}, len(x), 2000, rng)
    low, high = bootstrap.intervals(samples)["mean"]
    half_width = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert low == pytest.approx(x.mean() - half_width, abs=0.03)
    assert high == pytest.approx(x.mean() + half_width, abs=0.03)


def test_stratified_resampling_stays_within_each_group():
    rng = np.random.default_rng(1)
    strata = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6, 7, 8])]
    for _ in range(50):
        index = bootstrap.resample(rng, 9, strata)
        assert len(index) == 9
        parts = np.split(index, [3, 5])
        for part, group in zip(parts, strata, strict=True):
            assert set(part) <= set(group)


def test_failed_refits_are_dropped():
    rng = np.random.default_rng(2)
    samples = bootstrap.bootstrap(lambda i: None if i[0] == 0 else {"v": 1.0}, 4, 100, rng)
    assert 60 < len(samples["v"]) < 90  # P(first index is 0) = 1/4.
