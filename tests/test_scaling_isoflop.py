"""Approach 2: IsoFLOP minima recover N_opt ~ C^a of a known law; unusable budgets are skipped."""

import numpy as np
import pytest

from scaling import isoflop, synthetic
from scaling.rows import to_points

LAW = {"E": 0.9, "A": 25.0, "B": 120.0, "alpha": 0.25, "beta": 0.33}
A_TRUE = LAW["beta"] / (LAW["alpha"] + LAW["beta"])


def test_recovers_a_and_b_from_exact_profiles():
    rows = synthetic.isoflop_rows(LAW, np.geomspace(1e13, 1e16, 4), noise=0.0)
    result = isoflop.fit_isoflop(to_points(rows))
    # Every profile has the same shape in log N up to scale (see the module's maths), so the
    # parabola's offset from the true minimum is the same at every budget and the slope is exact.
    assert result["a"] == pytest.approx(A_TRUE, abs=2e-3)
    assert result["b"] == pytest.approx(1 - A_TRUE, abs=2e-3)
    assert result["n_budgets"] == 4 and result["reason"] is None


def test_recovers_a_and_b_from_noisy_profiles():
    rows = synthetic.isoflop_rows(LAW, np.geomspace(1e13, 1e16, 4), n_per_budget=9, noise=0.003)
    result = isoflop.fit_isoflop(to_points(rows))
    assert result["a"] == pytest.approx(A_TRUE, abs=0.03)
    assert result["b"] == pytest.approx(1 - A_TRUE, abs=0.03)
    # These points have C = 6ND, so D_opt read off each profile's (log N, log D) line is
    # C / (6 N_opt) (up to tokens being whole numbers).
    for p in result["profiles"]:
        assert p["D_opt"] == pytest.approx(p["C"] / (6 * p["N_opt"]), rel=1e-5)


def test_d_opt_follows_the_profiles_own_flops_per_token():
    """When C counts more than 6N per token (attention, unembedding): D_opt = C / FLOPs/token."""
    rows = synthetic.isoflop_rows(LAW, np.geomspace(1e13, 1e16, 4), n_per_budget=9, noise=0.0)
    fpt = lambda n: 6 * n + 3e4 * n**0.75  # an attention-like term, larger for small models
    for r in rows:
        r["tokens"] = int(round(r["budget"] / fpt(r["params"])))
        r["loss"] = float(synthetic.law_loss(r["params"], r["tokens"], LAW))
    result = isoflop.fit_isoflop(to_points(rows))
    usable = [p for p in result["profiles"] if p["N_opt"] is not None]
    assert len(usable) >= 2
    for p in usable:
        assert p["D_opt"] == pytest.approx(p["C"] / fpt(p["N_opt"]), rel=0.01)
        assert p["D_opt"] < 0.95 * p["C"] / (6 * p["N_opt"])


def test_minimum_at_the_edge_is_skipped_with_a_reason():
    rows = synthetic.isoflop_rows(LAW, np.geomspace(1e13, 1e15, 3), noise=0.0)
    # Keep only the models larger than the optimum at the middle budget: its minimum falls at the
    # small-N edge, so the budget is unusable.
    mid = [r for r in rows if r["budget"] == rows[7]["budget"]]
    drop = {r["id"] for r in sorted(mid, key=lambda r: r["params"])[:4]}
    result = isoflop.fit_isoflop(to_points([r for r in rows if r["id"] not in drop]))
    skipped = [p for p in result["profiles"] if p["N_opt"] is None]
    assert len(skipped) == 1 and "outside the profile's N range" in skipped[0]["reason"]
    assert result["n_budgets"] == 2 and result["a"] is not None


def test_fewer_than_two_usable_budgets_gives_null_exponents():
    rows = synthetic.isoflop_rows(LAW, np.array([1e14]), noise=0.0)
    rows += synthetic.isoflop_rows(LAW, np.array([1e15]), n_per_budget=2, noise=0.0)
    result = isoflop.fit_isoflop(to_points(rows))
    assert result["a"] is None and result["b"] is None
    assert "1 usable IsoFLOP budget" in result["reason"]
    assert result["profiles"][1]["reason"] == "2 distinct N (needs 3)"


def test_without_budgets_points_group_by_compute_within_5_percent():
    rows = synthetic.isoflop_rows(LAW, np.geomspace(1e13, 1e15, 3), noise=0.0)
    rng = np.random.default_rng(0)
    for r in rows:
        del r["budget"]  # a bare CSV of params, tokens, loss, flops
        r["flops"] *= 1 + rng.uniform(0, 0.04)  # C within 4%: still one profile per budget.
    groups = isoflop.profiles(to_points(rows))
    assert [len(g) for _, g in groups] == [7, 7, 7]
    assert [c for c, _ in groups] == pytest.approx([1e13, 1e14, 1e15], rel=0.05)
    result = isoflop.fit_isoflop(to_points(rows))
    assert result["a"] == pytest.approx(A_TRUE, abs=0.02)
    # A sweep's results say budget=null for grid points: nothing is guessed from C then.
    for r in rows:
        r["budget"] = None
    assert isoflop.profiles(to_points(rows)) == []


def test_plain_grid_points_are_not_profiles_when_budgets_exist():
    rows = synthetic.isoflop_rows(LAW, np.geomspace(1e13, 1e15, 3), noise=0.0)
    rows += synthetic.grid_rows(LAW, np.geomspace(1e5, 1e7, 3), np.geomspace(1e6, 1e8, 3))
    groups = isoflop.profiles(to_points(rows))
    assert [len(g) for _, g in groups] == [7, 7, 7]
