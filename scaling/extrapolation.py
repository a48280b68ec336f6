"""Extrapolation check: fit without the highest-compute points, then predict them.

Two law forms are fitted on the same split: approach 3's additive E + A/N^alpha + B/D^beta and
Kaplan's joint [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, in which a larger model gains more
from more data. Which form extrapolates is chosen *without looking at the held-out points*: by a
backtest inside the fit set (hold out its own highest-compute points the same way, fit both forms
on the rest, keep the form with the smaller worst error there). The verdict is the chosen form's;
both forms' errors are always reported.

Held out: the top `fraction` of points by C (at least one; points tied with the last one go too),
plus every point within 5% of the largest C (the IsoFLOP grouping tolerance, so a whole top budget
is held out together). The check passes when every held-out loss is predicted within 3% (relative).
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


FORMS = {"approach3": fit_parametric, "kaplan_joint": fit_joint}


def check(points: Points, fraction: float = HOLDOUT_FRACTION) -> dict:
    """Fits on the lower-compute points and reports relative errors on the held-out ones.

    Returns:
      {"n_fit", "n_held_out", "approach3" and "kaplan_joint" (each: "fit", "points" (id, N, D, C,
      loss, predicted, rel_err), "mean_abs_rel_err", "max_abs_rel_err", "threshold", "pass"),
      "backtest" ({"n_fit", "n_held_out", and each form's worst error}, or {"reason"}),
      "selected" (the form with the smaller backtest error; approach3 without a backtest),
      "pass" (the selected form's verdict), "threshold"}; or {"n_fit", "n_held_out", "reason"}
      when too few points remain to fit.
    """
    held = holdout_mask(points.compute, fraction)
    train, test = np.flatnonzero(~held), np.flatnonzero(held)
    out = {"n_fit": len(train), "n_held_out": len(test)}
    if len(train) < MIN_POINTS:
        return out | {
            "reason": f"only {len(train)} points below the held-out C (needs {MIN_POINTS})"
        }
    for name, fit_fn in FORMS.items():
        fit = fit_fn(points.params[train], points.tokens[train], points.loss[train])
        out[name] = _errors(points, test, fit)
    out["backtest"] = _backtest(points, train, fraction)
    worst = {name: out["backtest"].get(name, 0.0) for name in FORMS}
    out["selected"] = min(FORMS, key=lambda name: (worst[name], name != "approach3"))
    return out | {"pass": out[out["selected"]]["pass"], "threshold": PASS_REL_ERR}


def _backtest(points: Points, train: np.ndarray, fraction: float) -> dict:
    """Each form's worst relative error predicting the top of `train` from the rest of it."""
    inner = holdout_mask(points.compute[train], fraction)
    fit_idx, test_idx = train[~inner], train[inner]
    out = {"n_fit": len(fit_idx), "n_held_out": len(test_idx)}
    if len(fit_idx) < MIN_POINTS:
        return out | {"reason": f"only {len(fit_idx)} points to fit (needs {MIN_POINTS})"}
    for name, fit_fn in FORMS.items():
        fit = fit_fn(points.params[fit_idx], points.tokens[fit_idx], points.loss[fit_idx])
        out[name] = _errors(points, test_idx, fit)["max_abs_rel_err"]
    return out


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
