"""Approach 3: recovery of a known L(N, D), bootstrap coverage, Huber robustness, the gradient."""

import numpy as np
import pytest
from scipy import optimize

from scaling import analysis, blas, parametric, synthetic
from scaling.rows import to_points

# A Chinchilla-like law on a Chinchilla-like grid, and one with the smaller coefficients and the
# exponents small byte-level models show, on a grid of 1e5-1e7 parameters.
LAWS = {
    "chinchilla": (synthetic.CHINCHILLA, np.geomspace(1e7, 1e9, 5), np.geomspace(1e8, 1e10, 5)),
    "small": (
        {"E": 0.9, "A": 25.0, "B": 120.0, "alpha": 0.25, "beta": 0.33},
        np.geomspace(1e5, 1e7, 5),
        np.geomspace(1e6, 1e8, 5),
    ),
}


def _points(name, seed=0, noise=0.005):
    law, params, tokens = LAWS[name]
    return law, to_points(synthetic.grid_rows(law, params, tokens, noise=noise, seed=seed))


@pytest.mark.parametrize("name", list(LAWS))
def test_recovers_the_law_and_intervals_cover_the_truth(name):
    law, points = _points(name)
    with blas.single_threaded():
        _, a3 = analysis.approach3(points, 200, np.random.default_rng(0), (2.5, 97.5))
    # 25 points with 0.5% noise pin the exponents to a few hundredths; E, A, B trade off against
    # each other and are looser.
    assert a3["alpha"] == pytest.approx(law["alpha"], abs=0.03)
    assert a3["beta"] == pytest.approx(law["beta"], abs=0.03)
    assert a3["E"] == pytest.approx(law["E"], rel=0.05)
    assert a3["A"] == pytest.approx(law["A"], rel=0.35)
    assert a3["B"] == pytest.approx(law["B"], rel=0.35)
    a_true = law["beta"] / (law["alpha"] + law["beta"])
    assert a3["implied_a"] == pytest.approx(a_true, abs=0.03)
    assert a3["bootstrap_ok"] == 200
    # Nominal 95% intervals: over seeds 0-19 of each law, 1 seed in 20 had one or two of the five
    # parameters outside (measured while writing this test); seed 0 is not one of them.
    for key, value in law.items():
        low, high = a3["ci"][key]
        assert low <= value <= high, (key, value, low, high)
    low, high = a3["ci"]["a"]
    assert low <= a_true <= high


def test_exact_data_recovered_to_high_precision():
    law, points = _points("small", noise=0.0)
    fit = parametric.fit_parametric(points.params, points.tokens, points.loss)
    for key, value in law.items():
        assert getattr(fit, key) == pytest.approx(value, rel=1e-4), key


def test_huber_resists_outliers_that_move_least_squares():
    law, points = _points("chinchilla", seed=3)
    loss = points.loss.copy()
    loss[[2, 11, 23]] *= 1.5  # Three diverged-looking runs.
    huber = parametric.fit_parametric(points.params, points.tokens, loss)
    lsq = parametric.fit_least_squares(points.params, points.tokens, loss)
    clean = parametric.fit_parametric(points.params, points.tokens, points.loss)

    def worst_error(fit):
        return max(abs(fit.alpha - law["alpha"]), abs(fit.beta - law["beta"]))

    assert worst_error(huber) < 0.03
    assert abs(huber.alpha - clean.alpha) < 0.02 and abs(huber.beta - clean.beta) < 0.02
    assert worst_error(lsq) > 3 * worst_error(huber)
    # Off the outliers, Huber's predictions stay within the noise; least squares' do not.
    keep = np.setdiff1d(np.arange(len(loss)), [2, 11, 23])
    truth = synthetic.law_loss(points.params[keep], points.tokens[keep], law)
    huber_err = np.abs(huber.predict(points.params[keep], points.tokens[keep]) / truth - 1)
    lsq_err = np.abs(lsq.predict(points.params[keep], points.tokens[keep]) / truth - 1)
    assert huber_err.max() < 0.01
    assert lsq_err.max() > 2 * huber_err.max()


@pytest.mark.parametrize("delta", [parametric.HUBER_DELTA, None])
def test_analytic_gradient_matches_finite_differences(delta):
    _, points = _points("chinchilla")
    data = (np.log(points.params), np.log(points.tokens), np.log(points.loss), delta)
    rng = np.random.default_rng(0)
    for _ in range(5):
        theta = np.array([5.0, 5.0, 0.3, 0.3, 0.3]) + rng.normal(0, 0.3, 5)
        _, grad = parametric._objective_and_grad(theta, *data)
        numeric = optimize.approx_fprime(
            theta, lambda t: parametric._objective_and_grad(t, *data)[0]
        )
        np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-9)


def test_grid_objective_agrees_with_the_single_point_objective():
    _, points = _points("small")
    data = (np.log(points.params), np.log(points.tokens), np.log(points.loss))
    grid = parametric.init_grid()[::97]
    vectorised = parametric.grid_objective(grid, *data, parametric.HUBER_DELTA)
    one_by_one = [parametric._objective_and_grad(t, *data, parametric.HUBER_DELTA)[0] for t in grid]
    np.testing.assert_allclose(vectorised, one_by_one, rtol=1e-12)


def test_init_grid_is_the_papers():
    grid = parametric.init_grid()
    assert grid.shape == (5 * 5 * 6 * 6 * 5, 5)
    a, b, e, alpha, beta = grid.T
    np.testing.assert_array_equal(np.unique(a), [0, 5, 10, 15, 20, 25])
    np.testing.assert_array_equal(np.unique(b), [0, 5, 10, 15, 20, 25])
    np.testing.assert_array_equal(np.unique(e), [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_array_equal(np.unique(alpha), [0, 0.5, 1, 1.5, 2])
    np.testing.assert_array_equal(np.unique(beta), [0, 0.5, 1, 1.5, 2])
