"""Compute-optimal allocation: the closed form against brute-force minimisation."""

import numpy as np
import pytest

from scaling import allocation
from scaling.parametric import ParametricFit


def _law(E, A, B, alpha, beta):
    return ParametricFit(E, A, B, alpha, beta, 0.0, (np.log(A), np.log(B), np.log(E), alpha, beta))


@pytest.mark.parametrize(
    "law", [_law(1.69, 406.4, 410.7, 0.34, 0.28), _law(0.9, 25.0, 120.0, 0.25, 0.33)]
)
def test_closed_form_matches_brute_force(law):
    budgets = np.array([1e12, 1e15, 1e18, 1e21, 1e24])
    n_opt, d_opt, loss = allocation.compute_optimal(law, budgets)
    for c, n, d, lo in zip(budgets, n_opt, d_opt, loss, strict=True):
        grid = np.geomspace(1e2, 1e15, 400_001)  # Steps of 7.5e-5 in log N.
        losses = law.predict(grid, c / (6 * grid))
        best = np.argmin(losses)
        assert n == pytest.approx(grid[best], rel=2e-4)
        assert d == pytest.approx(c / (6 * grid[best]), rel=2e-4)
        assert lo == pytest.approx(losses[best], rel=1e-9)
        assert 6 * n * d == pytest.approx(c, rel=1e-12)


def test_implied_exponents_are_the_slopes_of_the_frontier():
    law = _law(1.69, 406.4, 410.7, 0.34, 0.28)
    a, b = allocation.implied_exponents(law)
    n1, d1, _ = allocation.compute_optimal(law, np.array([1e18]))
    n2, d2, _ = allocation.compute_optimal(law, np.array([1e22]))
    assert np.log(n2 / n1) / np.log(1e4) == pytest.approx(a, rel=1e-12)
    assert np.log(d2 / d1) / np.log(1e4) == pytest.approx(b, rel=1e-12)
    assert a == pytest.approx(0.28 / 0.62) and a + b == pytest.approx(1.0)


def test_default_budgets_cover_and_extend_the_sweep():
    budgets = allocation.default_budgets(np.array([3e12, 2e13, 1.2e14]))
    assert budgets[0] == pytest.approx(3e12) and budgets[-1] == pytest.approx(1.2e16)
    assert 1.2e14 in budgets and np.all(np.diff(budgets) > 0)
    table = allocation.allocation_table(_law(1.0, 10, 10, 0.3, 0.3), budgets, 1.2e14)
    assert [r["beyond_sweep"] for r in table] == [c > 1.2e14 for c in budgets]
