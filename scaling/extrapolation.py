"""Extrapolation check: fit without the highest-compute points, then predict them.

Two law forms are fitted on the same split: approach 3's additive E + A/N^alpha + B/D^beta and
Kaplan's joint [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D, in which a larger model gains more
from more data. Which form extrapolates is chosen *without looking at the held-out points*: by
leave-one-out cross-validation over the fit set (refit each form without each point in turn and
predict it; keep the form with the smaller mean relative error). The verdict is the chosen form's;
both forms' errors are always reported. (A two-point backtest inside the fit set was tried first
and proved too noisy to choose: on the default sweep it preferred approach 3 by 3.5% vs 3.7%.)

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


# Grid starts per leave-one-out refit, besides the full fit's optimum. Dropping one point barely
# moves the optimum, so the warm start finds it: on the test sweep 1 start gave the same
# cross-validation errors as 4 (to 1e-8) in 40% of the CPU time, and 0 starts changed them.
CV_STARTS = 1
FORMS = {"approach3": fit_parametric, "kaplan_joint": fit_joint}


def check(points: Points, fraction: float = HOLDOUT_FRACTION) -> dict:
    """Fits on the lower-compute points and reports relative errors on the held-out ones.

    Returns:
      {"n_fit", "n_held_out", "approach3" and "kaplan_joint" (each: "fit", "points" (id, N, D, C,
      loss, predicted, rel_err), "mean_abs_rel_err", "max_abs_rel_err", "threshold", "pass"),
      "cross_validation" ({"n_points", and each form's leave-one-out mean |relative error|}),
      "selected" (the form with the smaller cross-validation error; approach3 on a tie),
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
    fits = {}
    for name, fit_fn in FORMS.items():
        fits[name] = fit_fn(points.params[train], points.tokens[train], points.loss[train])
        out[name] = _errors(points, test, fits[name])
    out["cross_validation"] = cross_validation(points, train, fits)
    cv = out["cross_validation"]
    out["selected"] = min(FORMS, key=lambda name: (cv[name], name != "approach3"))
    return out | {"pass": out[out["selected"]]["pass"], "threshold": PASS_REL_ERR}


def cross_validation(points: Points, train: np.ndarray, fits: dict) -> dict:
    """Each form's mean |relative error| predicting each point of `train` from the others.

    Each refit starts from the full fit (`fits`) plus a few grid starts, as the bootstrap does.
    """
    out = {}
    for name, fit_fn in FORMS.items():
        errors = []
        warm = [np.asarray(fits[name].theta)]
        for i in train:
            rest = train[train != i]
            fit = fit_fn(
                points.params[rest],
                points.tokens[rest],
                points.loss[rest],
                n_starts=CV_STARTS,
                warm_starts=warm,
            )
            predicted = fit.predict(points.params[[i]], points.tokens[[i]])[0]
            errors.append(abs(predicted / points.loss[i] - 1.0))
        out[name] = float(np.mean(errors))
    return out | {"n_points": len(train)}


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
