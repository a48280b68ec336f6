"""A compute budget to a plan: compute-optimal N and D, a concrete ladder shape, the predicted loss.

The law is approach 3's L(N, D) = E + A / N^alpha + B / D^beta: a sweep's own fit (fit.json, N
non-embedding, with its bootstrap refits for the interval) or a published one (scaling/published.py;
Hoffmann et al. and Besiroglu et al. count every parameter, embeddings included). The optimum is
the closed form of scaling/allocation.py (C = 6 N D). A real model has a whole number of layers, so
the plan takes the ladder shape whose parameter count (as the law counts N) is nearest N_opt in
log space, trains it on D = C / (6 N_shape) tokens (the budget spent, not D_opt), and predicts the
loss there; the interval is the percentile range of the bootstrap refits' predictions at that
same (N, D).

The ladder rule is a fixed aspect ratio and head size, as experiments/scaling.py's ladder and
GPT-3's largest model (96 layers x 12,288 = 128 per layer, heads of 128): a model of k layers is
`aspect * k` wide with heads of `head_dim`.
"""

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from scaling import published
from scaling.allocation import compute_optimal
from scaling.bootstrap import LEVELS
from scaling.parametric import ParametricFit

LAW_KEYS = ("E", "A", "B", "alpha", "beta")
PUBLISHED = {"chinchilla": published.HOFFMANN_2022, "epoch": published.BESIROGLU_2024}


class PlanError(ValueError):
    """Unusable input (a law file, a budget, a ladder); the CLI prints it and exits 2."""


@dataclasses.dataclass(frozen=True)
class Law:
    """An approach-3 law with its provenance.

    Attributes:
      name: 'chinchilla', 'epoch' or the fit.json path.
      source: Where the constants come from.
      values: E, A, B, alpha, beta.
      n_definition: 'total' (every parameter) or 'non_embedding': what N counts.
      samples: Bootstrap refits, shape [S, 5] in LAW_KEYS order, or None.
    """

    name: str
    source: str
    values: dict[str, float]
    n_definition: str
    samples: np.ndarray | None = None

    @property
    def fit(self) -> ParametricFit:
        return as_fit(self.values)


def as_fit(v: dict[str, float]) -> ParametricFit:
    """A ParametricFit from E, A, B, alpha, beta (E = 0 allowed: log 0 = -inf is its theta)."""
    with np.errstate(divide="ignore"):
        theta = (np.log(v["A"]), np.log(v["B"]), np.log(v["E"]), v["alpha"], v["beta"])
    return ParametricFit(v["E"], v["A"], v["B"], v["alpha"], v["beta"], 0.0, theta)


def published_law(name: str) -> Law:
    """Hoffmann et al. 2022 ('chinchilla') or Besiroglu et al. 2024 ('epoch'), approach 3."""
    p = PUBLISHED[name]
    return Law(name, p["source"], {k: float(p[k]) for k in LAW_KEYS}, "total")


def law_from_fit(fit: dict, name: str) -> Law:
    """The approach-3 law of a sweep's fit.json, with its bootstrap refits when they were kept.

    Raises:
      PlanError: the file holds no proper approach-3 law (missing keys, alpha or beta <= 0).
    """
    missing = [k for k in LAW_KEYS if not isinstance(fit.get(k), int | float)]
    if missing:
        raise PlanError(
            f"--law {name}: no approach-3 {', '.join(missing)}; pass a sweep's fit.json"
        )
    values = {k: float(fit[k]) for k in LAW_KEYS}
    if not as_fit(values).is_proper():
        raise PlanError(f"--law {name}: the fitted law is improper (alpha or beta <= 0)")
    raw = (fit.get("approach3") or {}).get("samples")
    samples = None
    if raw and all(k in raw for k in LAW_KEYS):
        samples = np.array([raw[k] for k in LAW_KEYS], dtype=float).T
    return Law(name, f"approach-3 fit in {name}", values, "non_embedding", samples)


def shape(n_layers: int, aspect: int, head_dim: int) -> dict[str, int]:
    """The ladder's model of `n_layers` layers: `aspect * n_layers` wide, d_ff = 4 d_model."""
    d_model = aspect * n_layers
    return dict(n_layers=n_layers, d_model=d_model, n_heads=d_model // head_dim, d_ff=4 * d_model)


def nearest_shape(
    n_target: float,
    count: Callable[[dict], float],
    aspect: int,
    head_dim: int,
    max_layers: int = 512,
) -> dict:
    """The ladder shape whose `count(shape)` is nearest `n_target` in log space.

    Args:
      n_target: the parameter count to reach.
      count: parameters of a shape as the law counts N (total or non-embedding).
      aspect: d_model per layer.
      head_dim: head size (divides aspect).
      max_layers: the deepest rung considered.
    """
    if aspect < 1 or head_dim < 1 or aspect % head_dim:
        raise PlanError(f"--aspect {aspect} must be a positive multiple of --head_dim {head_dim}")
    best, best_gap = None, math.inf
    for k in range(1, max_layers + 1):
        s = shape(k, aspect, head_dim)
        n = count(s)
        gap = abs(math.log(n / n_target))
        if gap < best_gap:
            best, best_gap = s | {"params": n}, gap
        if n > n_target:  # counts grow with k: nothing deeper is nearer
            break
    if best_gap > math.log(2):
        raise PlanError(
            f"no ladder shape within 2x of N = {n_target:.3g} (aspect {aspect}, head_dim "
            f"{head_dim}, up to {max_layers} layers); change --aspect"
        )
    return best


def predicted_interval(
    law: Law, params: float, tokens: float, levels: tuple[float, float] = LEVELS
) -> list[float] | None:
    """Percentile interval of the loss at (N, D) over the law's bootstrap refits (None without)."""
    if law.samples is None or not len(law.samples):
        return None
    losses = [
        as_fit(dict(zip(LAW_KEYS, row, strict=True))).predict(
            np.array([params]), np.array([tokens])
        )[0]
        for row in law.samples
        if np.all(np.isfinite(row))
    ]
    losses = np.array(losses)
    losses = losses[np.isfinite(losses)]
    return [float(v) for v in np.percentile(losses, levels)] if len(losses) else None


def plan(
    law: Law, flops: float, count: Callable[[dict], float], aspect: int, head_dim: int
) -> dict:
    """The plan for a budget of `flops` FLOPs (C = 6 N D).

    Returns:
      {"law", "source", "n_definition", "C", "N_opt", "D_opt", "tokens_per_param", "loss_opt",
      "shape" (n_layers, d_model, n_heads, d_ff, params), "N", "D" (= C / 6N at the shape),
      "loss", "interval" ([low, high] or None), "levels"}.
    """
    if not (math.isfinite(flops) and flops > 0):
        raise PlanError(f"--flops {flops}: need a positive FLOP count such as 1e22")
    n_opt, d_opt, loss_opt = (float(v[0]) for v in compute_optimal(law.fit, np.array([flops])))
    s = nearest_shape(n_opt, count, aspect, head_dim)
    n = float(s["params"])
    d = flops / (6.0 * n)
    loss = float(law.fit.predict(np.array([n]), np.array([d]))[0])
    return {
        "law": law.name,
        "source": law.source,
        "n_definition": law.n_definition,
        "C": float(flops),
        "N_opt": n_opt,
        "D_opt": d_opt,
        "tokens_per_param": d_opt / n_opt,
        "loss_opt": loss_opt,
        "shape": s,
        "N": n,
        "D": d,
        "loss": loss,
        "interval": predicted_interval(law, n, d),
        "levels": list(LEVELS),
    }
