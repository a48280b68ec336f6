"""Every fit on one set of points, each with bootstrap intervals, gathered into one JSON-ready dict.

Bootstrap samples: approach 3 and the Kaplan slices resample their points with replacement;
approach 2 resamples within each IsoFLOP profile. Approach-3 refits start L-BFGS from the full-data
optimum plus the `BOOTSTRAP_STARTS` best grid points of the resampled objective: 200 refits of 25
points take ~5 s (1, 2 and 3 grid starts gave identical intervals there; each start adds ~2 s).
`a`, `b` come from approach 2 when it has 2+ usable budgets, else from approach 3's implied
beta / (alpha + beta) and alpha / (alpha + beta).
"""

import numpy as np

from scaling import allocation, bootstrap, extrapolation, isoflop, kaplan
from scaling.parametric import HUBER_DELTA, ParametricFit, fit_parametric
from scaling.rows import Points

BOOTSTRAP_STARTS = 2
LAW_KEYS = ("E", "A", "B", "alpha", "beta")


def _implied(fit: ParametricFit) -> tuple[float | None, float | None]:
    """Approach 3's a, b; None for an improper fit, whose allocation does not exist."""
    return allocation.implied_exponents(fit) if fit.is_proper() else (None, None)


def _approach3_values(fit: ParametricFit) -> dict[str, float]:
    a, b = _implied(fit)
    return fit.values() | {"a": np.nan if a is None else a, "b": np.nan if b is None else b}


def approach3(
    points: Points, n_bootstrap: int, rng: np.random.Generator, levels
) -> tuple[ParametricFit, dict]:
    """The Huber fit, and its block: least-squares twin, implied a/b, bootstrap intervals."""
    fit = fit_parametric(points.params, points.tokens, points.loss)
    warm = [np.array(fit.theta)]

    def refit(index):
        sample = points.take(index)
        refitted = fit_parametric(
            sample.params,
            sample.tokens,
            sample.loss,
            n_starts=BOOTSTRAP_STARTS,
            warm_starts=warm,
        )
        return _approach3_values(refitted)

    samples = bootstrap.bootstrap(refit, len(points), n_bootstrap, rng)
    lsq = fit_parametric(points.params, points.tokens, points.loss, delta=None, warm_starts=warm)
    implied_a, implied_b = _implied(fit)
    warning = None
    if not fit.is_proper():
        warning = (
            "the fitted law does not decrease in both N and D (alpha or beta <= 0, or an "
            "infinite coefficient): the sweep does not determine it; no allocation is derived"
        )
    return fit, {
        **fit.values(),
        "objective": fit.objective,
        "huber_delta": HUBER_DELTA,
        "implied_a": implied_a,
        "implied_b": implied_b,
        "least_squares": lsq.values(),
        "ci": bootstrap.intervals(samples, levels),
        # The refits themselves, so a prediction at any (N, D) gets its interval later
        # (scaling/plan.py): intervals of the parameters alone ignore their correlation.
        "samples": {k: samples[k] for k in LAW_KEYS} if samples else None,
        "bootstrap_ok": len(next(iter(samples.values()), [])),
        "bootstrap_improper": int(np.isnan(samples["a"]).sum()) if samples else 0,
        "warning": warning,
    }


def approach2(points: Points, n_bootstrap: int, rng: np.random.Generator, levels) -> dict:
    """IsoFLOP minima and a, b, with intervals from resampling within each profile."""
    groups = isoflop.profiles(points)
    result = isoflop.fit_isoflop(points, groups)
    if result["a"] is None:
        return result | {"ci": {}, "bootstrap_ok": 0}
    strata = [g for _, g in groups]
    ends = np.cumsum([len(g) for g in strata])[:-1]

    def refit(index):
        # A stratified sample lists each profile's resampled points in turn: split it back.
        parts = np.split(index, ends)
        out = isoflop.fit_isoflop(points, [(c, p) for (c, _), p in zip(groups, parts, strict=True)])
        return None if out["a"] is None else {"a": out["a"], "b": out["b"]}

    samples = bootstrap.bootstrap(refit, len(points), n_bootstrap, rng, strata)
    return result | {
        "ci": bootstrap.intervals(samples, levels),
        "bootstrap_ok": len(next(iter(samples.values()), [])),
    }


def _slice_samples(x: np.ndarray, loss: np.ndarray, names, n_bootstrap, rng) -> dict:
    """Bootstrap of Kaplan's pure power law on one slice; `names` = (exponent, scale)."""

    def refit(index):
        if len(np.unique(x[index])) < 2:
            return None
        law = kaplan.fit_power_law(x[index], loss[index])
        return {names[0]: law.exponent, names[1]: law.scale}

    return bootstrap.bootstrap(refit, len(x), n_bootstrap, rng)


def kaplan_fits(points: Points, n_bootstrap: int, rng: np.random.Generator, levels) -> dict:
    """Kaplan's L(N) and L(D), each with intervals from resampling its slice."""
    out = {}
    for variable in ("N", "D"):
        result = kaplan.fit_slice(points, variable)
        index = np.array(result.pop("index", []), dtype=int)
        samples = {}
        if len(index):
            x = (points.params if variable == "N" else points.tokens)[index]
            names = (f"alpha_{variable}", f"{variable}_c")
            samples = _slice_samples(x, points.loss[index], names, n_bootstrap, rng)
            result["ids"] = [points.ids[i] for i in index]
        out[f"L_{variable}"] = result | {"ci": bootstrap.intervals(samples, levels)}
    return out


def analyze_points(
    points: Points,
    *,
    n_bootstrap: int,
    seed: int,
    levels: tuple[float, float],
    budgets: np.ndarray | None,
) -> tuple[dict, ParametricFit]:
    """Runs every fit and check on `points`.

    Returns:
      The JSON-ready result (see `scaling.fit.analyze` for its keys) and the approach-3 law.
    """
    rng_a3, rng_a2, rng_k = np.random.default_rng(seed).spawn(3)
    fit, a3 = approach3(points, n_bootstrap, rng_a3, levels)
    a2 = approach2(points, n_bootstrap, rng_a2, levels)
    kap = kaplan_fits(points, n_bootstrap, rng_k, levels)
    from_a2 = a2["a"] is not None
    a_b_ci = a2["ci"] if from_a2 else a3["ci"]
    ci = {k: a3["ci"].get(k) for k in LAW_KEYS} | {k: a_b_ci.get(k) for k in ("a", "b")}
    for variable in ("N", "D"):
        ci |= {k: kap[f"L_{variable}"]["ci"].get(k) for k in (f"alpha_{variable}", f"{variable}_c")}
    budgets = allocation.default_budgets(points.compute) if budgets is None else budgets
    sweep_max = float(points.compute.max())
    result = {
        **fit.values(),
        "a": a2["a"] if from_a2 else a3["implied_a"],
        "b": a2["b"] if from_a2 else a3["implied_b"],
        "a_b_source": "approach2" if from_a2 else "approach3",
        "n_points": len(points),
        "ci": ci,
        "approach3": a3,
        "approach2": a2,
        "kaplan": kap,
        "allocation": allocation.allocation_table(fit, np.asarray(budgets, float), sweep_max),
        "extrapolation": extrapolation.check(points),
        "bootstrap": {"n_resamples": n_bootstrap, "seed": seed, "levels": list(levels)},
        "sweep": {
            "C_min": float(points.compute.min()),
            "C_max": sweep_max,
            "N_range": [float(points.params.min()), float(points.params.max())],
            "D_range": [float(points.tokens.min()), float(points.tokens.max())],
        },
    }
    return result, fit
