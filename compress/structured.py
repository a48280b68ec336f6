"""Structured pruning: remove whole attention heads and MLP neurons, giving a smaller model.

Every layer keeps the same number of heads and neurons (the layers stay stacked), chosen per layer
by importance; the result is a new model config (`n_heads`, `d_ff`, explicit `d_head`) and its
parameters, so parameter counts and FLOPs really fall. Importance of a unit (Molchanov et al.
2017; Michel et al. 2019): 'taylor' |sum of grad * w over its output weights| averaged over
batches, the first-order change of the loss when it is removed; 'weight' the product of the norms
of its input and output weights. A unit with zero output weights scores 0 under both. The
parameters of a unit are found by logical axes: `heads` (and `kv_heads` in an MHA model;
grouped-query models keep every head) and `mlp`.
"""

import jax.numpy as jnp
import numpy as np

from compress.quant import logical_names
from models.sizes import resolved_dims

IMPORTANCE = ("taylor", "weight")


def _per_unit(x, names, unit: str) -> np.ndarray:
    """x summed over every axis but `layers` and the unit's: [L, units]."""
    a = names.index(unit)
    return np.sum(x, axis=tuple(i for i in range(x.ndim) if i not in (0, a)))


def importance(params, names, *, method: str = "taylor", grads_list=()) -> dict[str, np.ndarray]:
    """Scores {'heads': [L, N], 'mlp': [L, F]} of every head and neuron of every layer, from the
    `logical_names` tree and, for 'taylor', the loss's gradient trees (one per batch)."""
    if method not in IMPORTANCE:
        raise ValueError(f"importance={method!r} is unknown; use one of {IMPORTANCE}")
    if method == "taylor" and not grads_list:
        raise ValueError("importance='taylor' needs gradients of at least one batch")
    p, n = params["layers"], names["layers"]
    f64 = lambda x: np.asarray(x, np.float64)
    scores = {}
    for unit in ("heads", "mlp"):
        out = _output_weight(n, unit)
        if method == "weight":
            inp = next(k for k in p if unit in n[k] and n[k][-1] != "embed")
            norm = lambda k, unit=unit: np.sqrt(_per_unit(np.square(f64(p[k])), n[k], unit))
            scores[unit] = norm(out) * norm(inp)
        else:
            per_batch = [
                _per_unit(f64(g["layers"][out]) * f64(p[out]), n[out], unit) for g in grads_list
            ]
            scores[unit] = np.mean(np.abs(per_batch), axis=0)
    return scores


def _output_weight(layer_names: dict, unit: str) -> str:
    """The parameter mapping a unit back into the residual stream (o for heads, wo for mlp)."""
    for key, names in layer_names.items():
        if unit in names and names[-1] == "embed":
            return key
    raise ValueError(f"the model has no output projection with a {unit!r} axis to prune")


def keep_indices(scores_LU: np.ndarray, n_keep: int) -> np.ndarray:
    """Per layer, the indices of the `n_keep` most important units, in their original order."""
    if not 1 <= n_keep <= scores_LU.shape[1]:
        raise ValueError(f"cannot keep {n_keep} of {scores_LU.shape[1]} units per layer")
    top = np.argsort(-scores_LU, axis=1, kind="stable")[:, :n_keep]
    return np.sort(top, axis=1)


def _gather(w, axis: int, idx_LU: np.ndarray):
    """w [L, ...] sliced along `axis` with per-layer indices."""
    shape = [1] * w.ndim
    shape[0], shape[axis] = idx_LU.shape
    return jnp.take_along_axis(jnp.asarray(w), jnp.asarray(idx_LU.reshape(shape)), axis=axis)


def prune_structured(params, model_cfg, model, scores: dict, *, n_heads: int, d_ff: int):
    """(new model config, new params) keeping per layer the `n_heads` heads and `d_ff` neurons
    (0: all) of highest `importance` `scores`; `model` gives the logical axis names."""
    new_cfg = structured_config(model_cfg, n_heads, d_ff)
    L, D, N, K, H, F, V = resolved_dims(model_cfg)
    if K != N and new_cfg.n_heads != N:
        raise ValueError(
            f"structured head pruning needs an MHA model (model.n_kv_heads={K} != n_heads={N}); "
            "prune MLP neurons only (keep every head)"
        )
    names = logical_names(model, model_cfg)["layers"]
    head_idx = keep_indices(scores["heads"], new_cfg.n_heads)
    mlp_idx = keep_indices(scores["mlp"], new_cfg.d_ff)
    layers = {}
    for key, w in params["layers"].items():
        for axis_name, idx in (("heads", head_idx), ("kv_heads", head_idx), ("mlp", mlp_idx)):
            if axis_name in names[key] and (axis_name != "kv_heads" or K == N):
                w = _gather(w, names[key].index(axis_name), idx)
        layers[key] = w
    return new_cfg, dict(params, layers=layers)


def structured_config(model_cfg, n_heads: int, d_ff: int):
    """The model config after keeping `n_heads` heads and `d_ff` neurons per layer (0: all;
    `d_head` made explicit, since it no longer follows from d_model / n_heads)."""
    L, D, N, K, H, F, V = resolved_dims(model_cfg)
    new_cfg = model_cfg.copy_and_resolve_references()
    with new_cfg.unlocked():
        new_cfg.n_heads, new_cfg.d_ff = n_heads or N, d_ff or F
        new_cfg.n_kv_heads = 0 if K == N else K
        new_cfg.d_head = H
    return new_cfg
