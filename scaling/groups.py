"""Grouping points whose values agree to a relative tolerance (IsoFLOP budgets, grid slices)."""

import numpy as np


def log_clusters(values: np.ndarray, rel_tol: float) -> np.ndarray:
    """Labels values so that each cluster spans at most a factor (1 + rel_tol).

    Greedy over sorted values: a value joins the current cluster if it is within (1 + rel_tol) of
    the cluster's smallest value, else it starts the next cluster. Labels count up with value.

    Args:
      values: Positive values, any order.
      rel_tol: Relative width of a cluster, e.g. 0.05 for IsoFLOP budgets, 0.01 for grid slices.

    Returns:
      Integer labels, same shape as `values`.
    """
    order = np.argsort(values, kind="stable")
    labels = np.empty(len(values), dtype=int)
    label, start = -1, None
    for i in order:
        if start is None or values[i] > start * (1.0 + rel_tol):
            label, start = label + 1, values[i]
        labels[i] = label
    return labels
