"""Chinchilla approach 2: IsoFLOP profiles, their minima, and N_opt ~ C^a, D_opt ~ C^b.

Profiles: points with a `budget` form one profile per budget value (points without a budget are
then left out; a sweep's results, where every row has the key, get no other profiles). If no row
says anything about budgets (a bare CSV), points whose C agree within 5% form a profile (greedy
over sorted C, see `groups.log_clusters`), labelled with the geometric mean of their C; groups of a
single point are plain grid points, not profiles.

For each profile a parabola in log N is fitted to the loss. It is used only if the profile has at
least 3 distinct N, the parabola opens upwards and its minimum lies strictly inside the profile's N
range; otherwise the budget is skipped and the reason recorded. D_opt is read off the profile's
own (log N, log D) relation (interpolated between its points) at N_opt: for C = 6ND this is
exactly C / (6 N_opt), and it stays right when a run's recorded `flops` also count attention and
the unembedding (D = C / FLOPs-per-token, as experiments/scaling.py designs IsoFLOP points), where
C / (6 N_opt) with non-embedding N would overstate D_opt by up to 2x for small models. With at
least 2 usable minima, log N_opt and log D_opt are
fitted as straight lines in log C.

Bias: with alpha != beta a profile is asymmetric in log N, so the parabola's vertex sits off the
true minimum. At fixed C the profile is L - E = K(C) (e^(-alpha u) / alpha + e^(beta u) / beta) with
u = log(N / N_opt), the same shape at every budget, so the offset is the same factor of N_opt at
every budget and `a` is unbiased when every budget samples the same range around its optimum; a
design whose N range drifts relative to N_opt across budgets biases `a`.
"""

import numpy as np

from scaling.groups import log_clusters
from scaling.rows import Points

ISO_TOL = 0.05
MIN_PROFILE = 3
MIN_BUDGETS = 2


def profiles(points: Points) -> list[tuple[float, np.ndarray]]:
    """The IsoFLOP profiles as (budget C, indices into `points`), by increasing C."""
    has_budget = np.isfinite(points.budget)
    if has_budget.any():
        where = np.flatnonzero(has_budget)
        labels = log_clusters(points.budget[where], 1e-9)
        groups = [where[labels == k] for k in range(labels.max() + 1)]
        return [(float(points.budget[g[0]]), g) for g in groups]
    if points.designed:
        return []
    labels = log_clusters(points.compute, ISO_TOL)
    groups = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    return [(float(np.exp(np.log(points.compute[g]).mean())), g) for g in groups if len(g) > 1]


def fit_profile(
    budget: float, params: np.ndarray, loss: np.ndarray, tokens: np.ndarray | None = None
) -> dict:
    """Fits loss = p2 x^2 + p1 x + p0, x = log N, on one profile and locates its minimum.

    Args:
      budget: The profile's compute C.
      params: N of the profile's points.
      loss: Their losses.
      tokens: D of the profile's points (None: D_opt = C / (6 N_opt)).

    Returns:
      {"C", "n_points", "N_opt", "D_opt", "loss_opt", "coef" (p2, p1, p0 in log N), "reason"}:
      N_opt/D_opt/loss_opt/coef None and `reason` set when the budget is skipped.
    """
    out = {"C": budget, "n_points": len(params), "N_opt": None, "D_opt": None, "loss_opt": None}
    out.update(coef=None, reason=None)
    n_distinct = len(np.unique(log_clusters(params, 1e-9)))
    if n_distinct < MIN_PROFILE:
        return out | {"reason": f"{n_distinct} distinct N (needs {MIN_PROFILE})"}
    x = np.log(params)
    p2, p1, p0 = np.polyfit(x, loss, 2)
    if p2 <= 0:
        return out | {"reason": "loss is not convex in log N (no interior minimum)"}
    x_opt = -p1 / (2 * p2)
    if not x.min() < x_opt < x.max():
        side = "smaller" if x_opt <= x.min() else "larger"
        return out | {
            "reason": f"minimum at N={np.exp(x_opt):.3g} is outside the profile's N range "
            f"[{params.min():.3g}, {params.max():.3g}]; add {side} models at this budget"
        }
    n_opt = float(np.exp(x_opt))
    if tokens is None:
        d_opt = budget / (6.0 * n_opt)
    else:
        order = np.argsort(x)
        d_opt = float(np.exp(np.interp(x_opt, x[order], np.log(tokens)[order])))
    return out | {
        "N_opt": n_opt,
        "D_opt": d_opt,
        "loss_opt": float(p0 - p1 * p1 / (4 * p2)),
        "coef": [float(p2), float(p1), float(p0)],
    }


def _power_law(c: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Fits y = k C^e in log-log; returns (e, k)."""
    e, log_k = np.polyfit(np.log(c), np.log(y), 1)
    return float(e), float(np.exp(log_k))


def fit_isoflop(points: Points, groups: list[tuple[float, np.ndarray]] | None = None) -> dict:
    """Approach 2 on all profiles.

    Args:
      points: The usable points.
      groups: Profiles as from `profiles(points)`; computed when None.

    Returns:
      {"a", "b", "k_N", "k_D" (N_opt = k_N C^a, D_opt = k_D C^b), "n_budgets" (usable),
      "profiles" (per budget, see `fit_profile`), "reason"}; a, b, k_N, k_D are None with a
      `reason` when fewer than 2 budgets are usable.
    """
    groups = profiles(points) if groups is None else groups
    fits = [fit_profile(c, points.params[g], points.loss[g], points.tokens[g]) for c, g in groups]
    for fit, (_, g) in zip(fits, groups, strict=True):
        fit["ids"] = [points.ids[i] for i in g]
    usable = [f for f in fits if f["N_opt"] is not None]
    out = {"a": None, "b": None, "k_N": None, "k_D": None, "n_budgets": len(usable)}
    out.update(profiles=fits, reason=None)
    if len(usable) < MIN_BUDGETS:
        why = "no IsoFLOP profiles" if not fits else f"{len(usable)} usable IsoFLOP budget(s)"
        return out | {"reason": f"{why} (needs {MIN_BUDGETS})"}
    c = np.array([f["C"] for f in usable])
    a, k_n = _power_law(c, np.array([f["N_opt"] for f in usable]))
    b, k_d = _power_law(c, np.array([f["D_opt"] for f in usable]))
    return out | {"a": a, "b": b, "k_N": k_n, "k_D": k_d}
