"""Nonparametric bootstrap: resample points with replacement, refit, take percentile intervals."""

from collections.abc import Callable, Sequence

import numpy as np

LEVELS = (2.5, 97.5)


def resample(rng: np.random.Generator, n: int, strata: Sequence[np.ndarray] | None) -> np.ndarray:
    """Indices of one bootstrap sample of `n` points.

    Args:
      rng: Random generator.
      n: Number of points.
      strata: Index groups resampled separately, each keeping its size (IsoFLOP profiles); None
        resamples all `n` points together.

    Returns:
      Integer indices, repeats allowed.
    """
    if strata is None:
        return rng.integers(0, n, size=n)
    return np.concatenate([rng.choice(group, size=len(group)) for group in strata])


def bootstrap(
    fit: Callable[[np.ndarray], dict[str, float] | None],
    n: int,
    n_resamples: int,
    rng: np.random.Generator,
    strata: Sequence[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Refits `fit` on `n_resamples` bootstrap samples.

    Args:
      fit: Maps sample indices to named fitted values, or None when the sample cannot be fitted
        (e.g. an IsoFLOP profile lost its interior minimum); such samples are dropped.
      n: Number of points.
      n_resamples: Number of bootstrap samples.
      rng: Random generator.
      strata: See `resample`.

    Returns:
      For each name, the fitted values of the successful samples (all names share one length).
    """
    draws = [fit(resample(rng, n, strata)) for _ in range(n_resamples)]
    draws = [d for d in draws if d is not None]
    if not draws:
        return {}
    return {key: np.array([d[key] for d in draws]) for key in draws[0]}


def intervals(
    samples: dict[str, np.ndarray], levels: tuple[float, float] = LEVELS
) -> dict[str, list[float]]:
    """Percentile intervals [low, high] of each named sample, over its finite values.

    Non-finite values (a refit without that quantity, e.g. no allocation from an improper law)
    are left out; a name with none left gets no interval.
    """
    finite = {key: values[np.isfinite(values)] for key, values in samples.items()}
    return {
        key: [float(v) for v in np.percentile(values, levels)]
        for key, values in finite.items()
        if len(values)
    }
