"""Extrapolation check: fit without the highest-compute points, then predict them.

Two law forms are checked on the same split: approach 3's additive E + A/N^alpha + B/D^beta (the
headline) and Kaplan's joint [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, so the report shows
which form describes the sweep's regime.

Held out: the top `fraction` of points by C (at least one; points tied with the last one go too),
plus every point within 5% of the largest C (the IsoFLOP grouping tolerance, so a whole top budget
is held out together). The check
passes when every held-out loss is predicted within 3% (relative).
"""

import math

import numpy as np

from scaling.isoflop import ISO_TOL
from scaling.kaplan import fit_joint
from scaling.parametric import fit_parametric
from scaling.rows import MIN_POINTS, Points

HOLDOUT_FRACTION = 0.15
PASS_REL_ERR = 0.03


def holdout_mask(compute: np.ndarray, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """True for the points held out of the fit (see module docstring)."""
    k = max(1, math.ceil(fraction * len(compute)))
    kth_largest = np.sort(compute)[::-1][k - 1]
    return compute >= min(kth_largest, compute.max() / (1.0 + ISO_TOL))


def check(points: Points, fraction: float = HOLDOUT_FRACTION) -> dict:
    """Fits on the lower-compute points and reports relative errors on the held-out ones.

    Returns:
      {"n_fit", "n_held_out", "fit" (the five parameters), "points" (id, N, D, C, loss,
      predicted, rel_err), "mean_abs_rel_err", "max_abs_rel_err", "threshold", "pass",
      "kaplan_joint" (the same block for Kaplan's joint form)}; or
      {"n_fit", "n_held_out", "reason"} when too few points remain to fit.
    """
    held = holdout_mask(points.compute, fraction)
    train, test = np.flatnonzero(~held), np.flatnonzero(held)
    out = {"n_fit": len(train), "n_held_out": len(test)}
    if len(train) < MIN_POINTS:
        return out | {
            "reason": f"only {len(train)} points below the held-out C (needs {MIN_POINTS})"
        }
    fit = fit_parametric(points.params[train], points.tokens[train], points.loss[train])
    joint = fit_joint(points.params[train], points.tokens[train], points.loss[train])
    return out | _errors(points, test, fit) | {"kaplan_joint": _errors(points, test, joint)}


def _errors(points: Points, test: np.ndarray, fit) -> dict:
    """Relative errors of `fit` (anything with `predict(N, D)` and `values()`) on `test`."""
    predicted = fit.predict(points.params[test], points.tokens[test])
    rel_err = (predicted - points.loss[test]) / points.loss[test]
    rows = [
        {
            "id": points.ids[i],
            "N": float(points.params[i]),
            "D": float(points.tokens[i]),
            "C": float(points.compute[i]),
            "loss": float(points.loss[i]),
            "predicted": float(p),
            "rel_err": float(e),
        }
        for i, p, e in zip(test, predicted, rel_err, strict=True)
    ]
    worst = float(np.abs(rel_err).max())
    return {
        "fit": fit.values(),
        "points": rows,
        "mean_abs_rel_err": float(np.abs(rel_err).mean()),
        "max_abs_rel_err": worst,
        "threshold": PASS_REL_ERR,
        "pass": worst <= PASS_REL_ERR,
    }
