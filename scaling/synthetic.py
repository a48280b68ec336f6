"""Synthetic sweep results drawn from a known L(N, D), for tests and for trying the fitter.

Rows follow the `results.jsonl` contract of the sweep runner (C = 6 N D, byte-level tokens so bits
per byte = loss / ln 2) and carry multiplicative log-normal noise on the loss.
"""

import math

import numpy as np

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def law_loss(params: np.ndarray, tokens: np.ndarray, law: dict[str, float]) -> np.ndarray:
    """E + A / N^alpha + B / D^beta."""
    return law["E"] + law["A"] / params ** law["alpha"] + law["B"] / tokens ** law["beta"]


def _row(n: float, d: float, loss: float, budget: float | None) -> dict:
    n, d = int(round(n)), int(round(d))
    return {
        "id": f"N{n:.3g}xD{d:.3g}",
        "family": "synthetic",
        "params": n,
        "tokens": d,
        "flops": 6.0 * n * d,
        "flops_per_token": 6.0 * n,
        "loss": float(loss),
        "bits_per_byte": float(loss) / math.log(2),
        "status": "ok",
        "budget": budget,
    }


def grid_rows(
    law: dict[str, float],
    params: np.ndarray,
    tokens: np.ndarray,
    *,
    noise: float = 0.005,
    seed: int = 0,
) -> list[dict]:
    """One row per (N, D) of the full grid `params` x `tokens`.

    Args:
      law: E, A, B, alpha, beta.
      params: N values.
      tokens: D values.
      noise: Standard deviation of the multiplicative noise on the loss (0.005 = 0.5%).
      seed: Noise seed.

    Returns:
      Rows with `budget` None.
    """
    rng = np.random.default_rng(seed)
    n, d = (x.ravel() for x in np.meshgrid(params, tokens, indexing="ij"))
    loss = law_loss(n, d, law) * np.exp(rng.normal(0.0, noise, n.shape))
    return [_row(*v, None) for v in zip(n, d, loss, strict=True)]


def isoflop_rows(
    law: dict[str, float],
    budgets: np.ndarray,
    *,
    n_per_budget: int = 7,
    span: float = 10.0,
    noise: float = 0.005,
    seed: int = 0,
) -> list[dict]:
    """IsoFLOP profiles: per budget C, N log-spaced over [N*/span, N* span] around the law's N*.

    Args:
      law: E, A, B, alpha, beta.
      budgets: Compute budgets C (FLOPs, C = 6 N D).
      n_per_budget: Points per profile.
      span: Half-width of each profile as a factor around the law's compute-optimal N.
      noise: Standard deviation of the multiplicative noise on the loss.
      seed: Noise seed.

    Returns:
      Rows with `budget` set to their C.
    """
    rng = np.random.default_rng(seed)
    g = (law["alpha"] * law["A"] / (law["beta"] * law["B"])) ** (1 / (law["alpha"] + law["beta"]))
    rows = []
    for c in budgets:
        n_star = g * (c / 6) ** (law["beta"] / (law["alpha"] + law["beta"]))
        n = np.geomspace(n_star / span, n_star * span, n_per_budget)
        d = c / (6 * n)
        loss = law_loss(n, d, law) * np.exp(rng.normal(0.0, noise, n.shape))
        rows += [_row(*v, float(c)) for v in zip(n, d, loss, strict=True)]
    return rows
