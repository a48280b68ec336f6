"""Kaplan et al. (2020) single-variable laws: L(N) = (N_c / N)^alpha_N and L(D) = (D_c / D)^alpha_D.

L(N) is fitted on the slice of points at the largest D, L(D) on the slice at the largest N. A slice
is the points whose D (or N) agree within 1%; the largest one with at least 3 distinct values of the
other variable is used, so an IsoFLOP design (every D different) still gets a fit where it can.

Both forms are fitted by linear least squares in log-log space. The variant with an irreducible
term, L = E + (X_c / X)^alpha, is fitted by nonlinear least squares on log L and needs 4 points.
"""

import dataclasses

import numpy as np
from scipy import optimize

from scaling.groups import log_clusters
from scaling.rows import Points

SLICE_TOL = 0.01
MIN_SLICE = 3


@dataclasses.dataclass(frozen=True)
class PowerLaw:
    """L(X) = E + (scale / X)^exponent, E = 0 for Kaplan's pure form."""

    exponent: float
    scale: float
    E: float = 0.0

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted loss at X = `x`."""
        return self.E + np.power(self.scale / x, self.exponent)


def fit_power_law(x: np.ndarray, loss: np.ndarray) -> PowerLaw:
    """Fits L = (X_c / X)^alpha: log L = alpha log X_c - alpha log X, a straight line."""
    slope, intercept = np.polyfit(np.log(x), np.log(loss), 1)
    alpha = -slope
    return PowerLaw(exponent=float(alpha), scale=float(np.exp(intercept / alpha)))


def fit_power_law_offset(x: np.ndarray, loss: np.ndarray) -> PowerLaw:
    """Fits L = E + (X_c / X)^alpha with E >= 0, least squares on log L, from a few E guesses."""
    logx, logl = np.log(x), np.log(loss)

    def residuals(theta):
        log_e, alpha, log_xc = theta
        return np.logaddexp(log_e, alpha * (log_xc - logx)) - logl

    best = None
    for frac in (0.1, 0.5, 0.9):
        e0 = frac * loss.min()
        pure = fit_power_law(x, loss - e0)
        theta0 = [np.log(e0), pure.exponent, np.log(pure.scale)]
        res = optimize.least_squares(residuals, theta0, method="lm", xtol=1e-14, ftol=1e-14)
        if best is None or res.cost < best.cost:
            best = res
    log_e, alpha, log_xc = best.x
    return PowerLaw(exponent=float(alpha), scale=float(np.exp(log_xc)), E=float(np.exp(log_e)))


def select_slice(fixed: np.ndarray, varied: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Indices of the points at the largest `fixed` value having >= MIN_SLICE distinct `varied`.

    Args:
      fixed: The variable held constant (D for L(N)).
      varied: The variable the law is a function of (N for L(N)).

    Returns:
      (indices, the slice's fixed value as a geometric mean), or None if no slice qualifies.
    """
    labels = log_clusters(fixed, SLICE_TOL)
    for label in range(labels.max(), -1, -1):
        index = np.flatnonzero(labels == label)
        if len(np.unique(log_clusters(varied[index], SLICE_TOL))) >= MIN_SLICE:
            return index, float(np.exp(np.log(fixed[index]).mean()))
    return None


def _law_dict(law: PowerLaw | None, exponent: str, scale: str) -> dict | None:
    if law is None:
        return None
    return {exponent: law.exponent, scale: law.scale, "E": law.E}


def fit_slice(points: Points, variable: str) -> dict:
    """Kaplan's L(N) (`variable="N"`, at the largest D) or L(D) (`variable="D"`, largest N).

    Returns:
      A dict with the pure fit's exponent and scale under Kaplan's names (alpha_N, N_c or alpha_D,
      D_c), the slice (`at_D` or `at_N`), `n_points`, `index` (into `points`), `with_E` (the fit
      with an irreducible term, or None below 4 points); or exponent None with a `reason`.
    """
    varied, fixed = (
        (points.params, points.tokens) if variable == "N" else (points.tokens, points.params)
    )
    other = "D" if variable == "N" else "N"
    exponent, scale = f"alpha_{variable}", f"{variable}_c"
    picked = select_slice(fixed, varied)
    if picked is None:
        return {
            exponent: None,
            scale: None,
            "reason": f"no {other} value shared by {MIN_SLICE}+ distinct {variable} values",
        }
    index, at = picked
    law = fit_power_law(varied[index], points.loss[index])
    with_e = fit_power_law_offset(varied[index], points.loss[index]) if len(index) >= 4 else None
    return {
        exponent: law.exponent,
        scale: law.scale,
        f"at_{other}": at,
        "n_points": len(index),
        "index": index.tolist(),
        "with_E": _law_dict(with_e, exponent, scale),
    }


@dataclasses.dataclass(frozen=True)
class JointLaw:
    """Kaplan et al. (2020) eq. 1.5: L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D.

    Unlike the additive Chinchilla form, the benefit of a larger N grows with D (larger models
    are more sample-efficient), the shape of early, data-limited training.
    """

    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float

    def predict(self, params: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Predicted loss at (N, D)."""
        return np.exp(_joint_log(self.theta, np.log(params), np.log(tokens)))

    @property
    def theta(self) -> np.ndarray:
        """The fitted parameters as the solver sees them: log N_c, log D_c, alpha_N, alpha_D."""
        return np.array([np.log(self.N_c), np.log(self.D_c), self.alpha_N, self.alpha_D])

    def values(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _joint_log(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    log_nc, log_dc, alpha_n, alpha_d = theta
    return alpha_d * np.logaddexp((alpha_n / alpha_d) * (log_nc - log_n), log_dc - log_d)


def _joint_log_jac(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """d _joint_log / d theta, shape [P, 4]: the solver's Jacobian, written out.

    With u = (alpha_N / alpha_D)(log N_c - log N), v = log D_c - log D and w = sigmoid(u - v)
    (the softmax weight of u in LSE(u, v)): d/dlog N_c = alpha_N w, d/dlog D_c = alpha_D (1 - w),
    d/dalpha_N = w (log N_c - log N), d/dalpha_D = LSE(u, v) - w u. Analytic rather than
    finite differences: the leave-one-out cross-validation refits this law dozens of times, and
    a numeric Jacobian made those refits 3x slower.
    """
    log_nc, log_dc, alpha_n, alpha_d = theta
    gap = log_nc - log_n
    u, v = (alpha_n / alpha_d) * gap, log_dc - log_d
    w = 0.5 * (1.0 + np.tanh(0.5 * (u - v)))  # sigmoid, without overflow
    lse = np.logaddexp(u, v)
    return np.stack([alpha_n * w, alpha_d * (1.0 - w), w * gap, lse - w * u], axis=1)


JOINT_STARTS = 8


def _joint_grid() -> np.ndarray:
    """Starts: log N_c, log D_c in {10, 15, 20, 25}, alpha_N, alpha_D in {0.1, 0.3} (64)."""
    axes = ((10.0, 15.0, 20.0, 25.0), (10.0, 15.0, 20.0, 25.0), (0.1, 0.3), (0.1, 0.3))
    return np.array(np.meshgrid(*axes, indexing="ij")).reshape(4, -1).T


def fit_joint(
    params: np.ndarray,
    tokens: np.ndarray,
    loss: np.ndarray,
    *,
    n_starts: int = JOINT_STARTS,
    warm_starts: list[np.ndarray] | None = None,
) -> JointLaw:
    """Fits the joint law on log L with the approach-3 Huber loss (delta 1e-3), multi-start.

    Like approach 3, the initialisation grid (`_joint_grid`) is scored first and the solver runs
    from its `n_starts` best points (plus `warm_starts`, e.g. a full-data optimum given as
    `JointLaw.theta`); the best final objective wins.
    """
    log_n, log_d, log_l = np.log(params), np.log(tokens), np.log(loss)

    def residuals(theta: np.ndarray) -> np.ndarray:
        return _joint_log(theta, log_n, log_d) - log_l

    grid = _joint_grid()
    r = np.abs(np.stack([residuals(t) for t in grid]))
    huber = np.where(r <= 1e-3, 0.5 * r**2, 1e-3 * (r - 0.5e-3)).sum(axis=1)
    starts = list(warm_starts or []) + list(grid[np.argsort(huber, kind="stable")[:n_starts]])
    best = None
    for theta0 in starts:
        result = optimize.least_squares(
            residuals,
            theta0,
            jac=lambda theta: _joint_log_jac(theta, log_n, log_d),
            bounds=([0.0, 0.0, 1e-3, 1e-3], [100.0, 100.0, 3.0, 3.0]),
            loss="huber",
            f_scale=1e-3,
        )
        if best is None or result.cost < best.cost:
            best = result
    log_nc, log_dc, alpha_n, alpha_d = best.x
    return JointLaw(
        N_c=float(np.exp(log_nc)),
        D_c=float(np.exp(log_dc)),
        alpha_N=float(alpha_n),
        alpha_D=float(alpha_d),
    )
