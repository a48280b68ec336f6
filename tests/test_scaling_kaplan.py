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


def test_joint_law_recovers_kaplans_parameters():
    """Kaplan's joint L(N, D) from a known law (0.5% noise) on a 5 x 5 grid."""
    truth = kaplan.JointLaw(N_c=8.8e6, D_c=5.4e6, alpha_N=0.14, alpha_D=0.24)
    n, d = np.meshgrid(np.geomspace(1e4, 1e6, 5), np.geomspace(4e5, 4e6, 5))
    rng = np.random.default_rng(0)
    loss = truth.predict(n.ravel(), d.ravel()) * np.exp(rng.normal(0, 0.005, n.size))
    fit = kaplan.fit_joint(n.ravel(), d.ravel(), loss)
    assert fit.alpha_N == pytest.approx(truth.alpha_N, rel=0.1)
    assert fit.alpha_D == pytest.approx(truth.alpha_D, rel=0.1)
    assert np.log(fit.N_c) == pytest.approx(np.log(truth.N_c), abs=0.5)
    assert np.log(fit.D_c) == pytest.approx(np.log(truth.D_c), abs=0.5)
    # Off the grid (10x the largest D) the fitted law predicts within 2%.
    far = truth.predict(np.array([1e6]), np.array([4e7]))
    assert fit.predict(np.array([1e6]), np.array([4e7])) == pytest.approx(far, rel=0.02)


def test_joint_law_jacobian_matches_finite_differences():
    from scaling.kaplan import _joint_log, _joint_log_jac

    rng = np.random.default_rng(0)
    log_n, log_d = rng.uniform(10, 16, 7), rng.uniform(13, 18, 7)
    theta = np.array([14.0, 19.0, 0.3, 0.25])
    eye = 1e-6 * np.eye(4)
    numeric = np.stack(
        [
            (_joint_log(theta + e, log_n, log_d) - _joint_log(theta - e, log_n, log_d)) / 2e-6
            for e in eye
        ],
        axis=1,
    )
    np.testing.assert_allclose(_joint_log_jac(theta, log_n, log_d), numeric, atol=1e-7)
