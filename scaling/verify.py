"""A prediction beyond the sweep, registered before its run is trained, and its score afterwards.

The held-out check (scaling/extrapolation.py) predicts the sweep's own top-compute points, whose
model sizes are in the fit set: interpolation in N. Here every law form is fitted on *all* the
points and predicts a run that extends both axes: the next rung of the ladder, trained on the
tokens that spend K x the sweep's largest compute C_max with it (`target_tokens` says why not
approach 3's D_opt(K C_max)).
Each form's interval is the percentile range of its bootstrap refits' predictions at that (N, D).
The sweep runner (studies/sweep.py) writes `predict`'s dict to prediction.json before the run
starts and never rewrites it; `score` compares it with the loss the run reached.
"""

import time

import numpy as np

from scaling import bootstrap
from scaling.allocation import compute_optimal
from scaling.extrapolation import FORMS, cross_validation
from scaling.parametric import fit_parametric
from scaling.rows import Points

# Starts per bootstrap refit besides the full-data optimum (as scaling/analysis.py's refits).
REFIT_STARTS = 1


def target_tokens(points: Points, factor: float, flops_per_token: float) -> tuple[float, str]:
    """The tokens that spend `factor` x C_max with a model of `flops_per_token`, and a note.

    The next rung is larger than approach 3's compute-optimal N at K x C_max whenever the fitted
    law is data-hungry (as on the CPU default), so pairing that rung with the law's D_opt(K C_max)
    would spend many times K C_max. The run keeps the compute at K x C_max instead; the note
    states the law's own allocation at that budget beside it.
    """
    budget = factor * float(points.compute.max())
    how = f"{factor:g} x C_max = {budget:.3g} FLOPs"
    fit = fit_parametric(points.params, points.tokens, points.loss)
    if fit.is_proper():
        n_opt, d_opt, _ = compute_optimal(fit, np.array([budget]))
        how += f" (approach 3's optimum there: N {n_opt[0]:.3g}, D {d_opt[0]:.3g})"
    return budget / flops_per_token, how


def predict(
    points: Points,
    run: dict,
    *,
    factor: float,
    n_bootstrap: int,
    seed: int,
    levels: tuple[float, float] = bootstrap.LEVELS,
) -> dict:
    """Each form's prediction of `run`'s loss, with its bootstrap interval.

    Args:
      points: The sweep's usable points (all of them are fitted).
      run: The run to predict: a sweep point dict (params, tokens, flops, shape, ...).
      factor: K, the compute multiple the tokens were chosen for.
      n_bootstrap: Resamples for the intervals (0: none).
      seed: Resampling seed.
      levels: Percentiles of the intervals.

    Returns:
      JSON-ready {"run", "factor", "C_sweep_max", "n_points", "levels", "n_bootstrap",
      "selected_in_advance" (the form leave-one-out cross-validation over all points prefers),
      "cross_validation", "forms": {form: {"predicted", "interval", "fit", "bootstrap_ok"}},
      "predicted_at" (unix time)}.
    """
    n, d = np.array([float(run["params"])]), np.array([float(run["tokens"])])
    rng = np.random.default_rng(seed)
    fits, forms = {}, {}
    for name, fit_fn in FORMS.items():
        fit = fits[name] = fit_fn(points.params, points.tokens, points.loss)
        warm = [np.asarray(fit.theta)]

        def refit(index, fit_fn=fit_fn, warm=warm):
            s = points.take(index)
            f = fit_fn(s.params, s.tokens, s.loss, n_starts=REFIT_STARTS, warm_starts=warm)
            return {"predicted": float(f.predict(n, d)[0])}

        samples = bootstrap.bootstrap(refit, len(points), n_bootstrap, rng)
        forms[name] = {
            "predicted": float(fit.predict(n, d)[0]),
            "interval": bootstrap.intervals(samples, levels).get("predicted"),
            "fit": fit.values(),
            "bootstrap_ok": len(samples.get("predicted", [])),
        }
    cv = cross_validation(points, np.arange(len(points)), fits)
    return {
        "run": run,
        "factor": factor,
        "C_sweep_max": float(points.compute.max()),
        "n_points": len(points),
        "levels": list(levels),
        "n_bootstrap": n_bootstrap,
        "selected_in_advance": min(FORMS, key=lambda f: (cv[f], f != "approach3")),
        "cross_validation": cv,
        "forms": forms,
        "predicted_at": time.time(),
    }


def score(prediction: dict, measured: dict) -> dict:
    """The prediction against the trained run's loss.

    Returns:
      {"prediction" (as registered), "loss", "forms": {form: {"predicted", "interval", "rel_err"
      ((predicted - loss) / loss), "inside" (the loss within the interval; None without one)}},
      "right" (the form with the smallest |rel_err|), "selected_in_advance"}.
    """
    loss = float(measured["loss"])
    forms = {}
    for name, f in prediction["forms"].items():
        lo_hi = f["interval"]
        forms[name] = {
            "predicted": f["predicted"],
            "interval": lo_hi,
            "rel_err": (f["predicted"] - loss) / loss,
            "inside": None if lo_hi is None else bool(lo_hi[0] <= loss <= lo_hi[1]),
        }
    right = min(forms, key=lambda name: abs(forms[name]["rel_err"]))
    return {
        "prediction": prediction,
        "loss": loss,
        "measured": measured,
        "forms": forms,
        "right": right,
        "selected_in_advance": prediction["selected_in_advance"],
    }
