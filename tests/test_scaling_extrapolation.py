"""Extrapolation check: which points are held out, and that it passes or fails when it should."""

import numpy as np
import pytest

from scaling import extrapolation, synthetic
from scaling.kaplan import JointLaw
from scaling.rows import to_points

LAW = {"E": 0.9, "A": 25.0, "B": 120.0, "alpha": 0.25, "beta": 0.33}


def test_holds_out_the_top_15_percent_and_every_point_at_the_largest_c():
    compute = np.array([1.0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20])
    assert np.flatnonzero(extrapolation.holdout_mask(compute)).tolist() == [17, 18, 19]
    # Five points share the largest C (within 5%): all of them go, though 15% of 20 is 3.
    compute[-5:] = [100, 101, 102, 103, 104]
    assert extrapolation.holdout_mask(compute).sum() == 5
    # At least one point, even for tiny sets.
    assert extrapolation.holdout_mask(np.array([1.0, 2.0, 3.0]), fraction=0.01).sum() == 1


def test_passes_on_data_from_the_law():
    rows = synthetic.grid_rows(
        LAW, np.geomspace(1e5, 1e7, 5), np.geomspace(1e6, 1e8, 5), noise=0.002
    )
    result = extrapolation.check(to_points(rows))
    assert result["n_held_out"] == 4 and result["n_fit"] == 21
    assert result["selected"] == "approach3" and result["pass"]
    assert result["approach3"]["max_abs_rel_err"] < 0.01
    for p in result["approach3"]["points"]:
        truth = synthetic.law_loss(np.array(p["N"]), np.array(p["D"]), LAW)
        assert p["predicted"] == pytest.approx(truth, rel=0.01)


def test_fails_when_the_largest_runs_break_the_trend():
    rows = synthetic.grid_rows(
        LAW, np.geomspace(1e5, 1e7, 5), np.geomspace(1e6, 1e8, 5), noise=0.002
    )
    points = to_points(rows)
    held = extrapolation.holdout_mask(points.compute)
    for row, h in zip(rows, held, strict=True):
        if h:
            row["loss"] *= 1.08  # e.g. a learning rate that stops working at scale
    result = extrapolation.check(to_points(rows))
    assert not result["pass"]
    assert result["approach3"]["max_abs_rel_err"] == pytest.approx(1 - 1 / 1.08, abs=0.01)
    assert not result["kaplan_joint"]["pass"]


def test_cross_validation_picks_the_form_the_data_follow():
    """On points from Kaplan's joint law cross-validation (fit set only) picks that form, whose
    held-out predictions are right, while the additive form misses them."""
    law = JointLaw(N_c=6e5, D_c=1.5e7, alpha_N=0.14, alpha_D=0.19)
    n, d = np.meshgrid(np.geomspace(1e4, 1e6, 4), np.geomspace(5e5, 5e6, 4))
    rng = np.random.default_rng(0)
    loss = law.predict(n.ravel(), d.ravel()) * np.exp(rng.normal(0, 0.002, n.size))
    rows = [
        synthetic._row(a, b, c, None) for a, b, c in zip(n.ravel(), d.ravel(), loss, strict=True)
    ]
    result = extrapolation.check(to_points(rows))
    cv = result["cross_validation"]
    assert cv["n_points"] == result["n_fit"] and cv["kaplan_joint"] < cv["approach3"]
    assert result["selected"] == "kaplan_joint" and result["pass"]
    assert result["kaplan_joint"]["max_abs_rel_err"] < 0.01


def test_too_few_points_left_to_fit_is_reported():
    rows = synthetic.grid_rows(LAW, np.geomspace(1e5, 1e7, 2), np.geomspace(1e6, 1e8, 3))
    result = extrapolation.check(to_points(rows), fraction=0.5)
    # C = 6 N D: the 3rd largest C (6e13) is shared by two points, so 4 are held out, 2 remain.
    assert result["n_held_out"] == 4 and result["n_fit"] == 2
    assert "only 2 points" in result["reason"]
