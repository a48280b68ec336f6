"""Kaplan single-variable laws: recovery of a known exponent and the choice of slice."""

import numpy as np
import pytest

from scaling import kaplan, synthetic
from scaling.rows import to_points


def _rows(n, d, loss):
    return [synthetic._row(a, b, c, None) for a, b, c in zip(n, d, loss, strict=True)]


def test_recovers_alpha_n_and_n_c_at_the_largest_d():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e5, 1e8, 7)
    # The slice at the largest D follows Kaplan's law; smaller D points are worse and must not
    # be used.
    at_max = (8.8e13 / n) ** 0.076 * np.exp(rng.normal(0, 0.002, n.size))
    rows = _rows(n, np.full(n.size, 1e9), at_max)
    rows += _rows(n, np.full(n.size, 1e8), 1.2 * at_max)
    result = kaplan.fit_slice(to_points(rows), "N")
    assert result["at_D"] == pytest.approx(1e9)
    assert result["n_points"] == 7
    assert result["alpha_N"] == pytest.approx(0.076, abs=0.003)
    assert np.log10(result["N_c"]) == pytest.approx(np.log10(8.8e13), abs=0.5)


def test_recovers_alpha_d_with_and_without_an_irreducible_term():
    d = np.geomspace(1e6, 1e9, 8)
    pure = (5.4e13 / d) ** 0.095
    result = kaplan.fit_slice(to_points(_rows(np.full(d.size, 1e7), d, pure)), "D")
    assert result["alpha_D"] == pytest.approx(0.095, rel=1e-6)
    assert result["D_c"] == pytest.approx(5.4e13, rel=1e-4)
    offset = 1.5 + (3e6 / d) ** 0.4
    law = kaplan.fit_power_law_offset(d, offset)
    assert law.E == pytest.approx(1.5, rel=1e-4)
    assert law.exponent == pytest.approx(0.4, rel=1e-4)
    assert law.scale == pytest.approx(3e6, rel=1e-3)


def test_slice_is_the_largest_d_with_three_distinct_n():
    n = np.array([1e5, 1e6, 1e7, 1e5, 1e6, 1e8])
    d = np.array([1e8, 1e8, 1e8, 1e9, 1e9, 1e10])  # D = 1e9 and 1e10 have too few N.
    index, at = kaplan.select_slice(d, n)
    assert sorted(index.tolist()) == [0, 1, 2] and at == pytest.approx(1e8)
    assert kaplan.select_slice(np.array([1e8, 1e9, 1e10]), np.array([1e5, 1e6, 1e7])) is None
