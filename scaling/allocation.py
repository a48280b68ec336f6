"""Compute-optimal allocation implied by a fitted L(N, D) = E + A / N^alpha + B / D^beta.

Minimising L(N, C / (6N)) over N gives (Hoffmann et al. 2022, eq. 4)
  N_opt(C) = G (C/6)^(beta / (alpha + beta)),  D_opt(C) = G^-1 (C/6)^(alpha / (alpha + beta)),
  G = (alpha A / (beta B))^(1 / (alpha + beta)),
so a = beta / (alpha + beta) and b = alpha / (alpha + beta).
"""

import numpy as np

from scaling.parametric import ParametricFit

EXTEND = 100.0  # Default budgets reach this factor beyond the sweep's largest C.


def implied_exponents(fit: ParametricFit) -> tuple[float, float]:
    """(a, b) with N_opt ~ C^a and D_opt ~ C^b."""
    total = fit.alpha + fit.beta
    return fit.beta / total, fit.alpha / total


def compute_optimal(
    fit: ParametricFit, compute: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N_opt, D_opt and the predicted loss at budgets `compute` (FLOPs, C = 6 N D).

    Needs a proper fit (alpha, beta > 0; see `ParametricFit.is_proper`).
    """
    log_a, log_b, _, alpha, beta = fit.theta
    # log G from the log coefficients, as A or B alone may overflow a float.
    log_g = (np.log(alpha) + log_a - np.log(beta) - log_b) / (alpha + beta)
    a, b = implied_exponents(fit)
    log_c6 = np.log(np.asarray(compute, dtype=float) / 6.0)
    n_opt, d_opt = np.exp(log_g + a * log_c6), np.exp(b * log_c6 - log_g)
    return n_opt, d_opt, fit.predict(n_opt, d_opt)


def default_budgets(compute: np.ndarray) -> np.ndarray:
    """One budget per decade from the sweep's smallest C to EXTEND x its largest, plus both ends."""
    lo, hi = compute.min(), compute.max() * EXTEND
    decades = 10.0 ** np.arange(np.ceil(np.log10(lo)), np.floor(np.log10(hi)) + 1)
    return np.unique(np.concatenate([[lo, compute.max()], decades, [hi]]))


def allocation_table(fit: ParametricFit, budgets: np.ndarray, sweep_max: float) -> list[dict]:
    """One row per budget: C, N_opt, D_opt, tokens per parameter, predicted loss, beyond sweep.

    Empty when the fit is not proper (no compute-optimal allocation exists).
    """
    if not fit.is_proper():
        return []
    n_opt, d_opt, loss = compute_optimal(fit, budgets)
    return [
        {
            "C": float(c),
            "N_opt": float(n),
            "D_opt": float(d),
            "tokens_per_param": float(d / n),
            "loss": float(lo),
            "beyond_sweep": bool(c > sweep_max * (1 + 1e-9)),
        }
        for c, n, d, lo in zip(budgets, n_opt, d_opt, loss, strict=True)
    ]
