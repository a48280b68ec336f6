"""Structured pruning: remove whole attention heads and MLP neurons, giving a smaller model.

Every layer keeps the same number of heads and neurons (the layers stay stacked), chosen per
layer by an importance score; the result is a new model config (`n_heads`, `d_ff`, and `d_head`
made explicit) and its parameters, so parameter counts and FLOPs really fall (models/counting.py
counts the new config).

Importance of a unit u (Molchanov et al. 2017; Michel et al. 2019 for heads):
- 'taylor': |sum over the unit's output weights of grad * w|, averaged over batches: the
  first-order change of the loss when the unit is removed (zeroing a head's slice of `o`, or a
  neuron's row of `wo`, removes exactly that unit's contribution).
- 'weight': the product of the norms of the unit's input and output weights (no data).
A unit whose output weights are zero has importance 0 under both, and removing it leaves the
model's function unchanged.

Which parameters belong to a unit is read off the logical axes: every `layers` parameter with a
`heads` axis (q, o, biases if any) is sliced along it, and with `kv_heads` when the model is MHA
(n_kv_heads == n_heads; grouped-query models are refused); every parameter with an `mlp` axis
(wi, wo, a gate if any) is sliced along `mlp`.
"""

import jax.numpy as jnp
import numpy as np

from compress.quant import logical_names
from models.sizes import resolved_dims

IMPORTANCE = ("taylor", "weight")


def _unit_norm(w, names, axis_name: str) -> np.ndarray:
    """Norm of each unit's slice of w: [L, units]."""
    a = names.index(axis_name)
    keep = (0, a)
    other = tuple(i for i in range(w.ndim) if i not in keep)
    return np.sqrt(np.sum(np.square(np.asarray(w, np.float64)), axis=other))


def importance(params, names, *, method: str = "taylor", grads_list=()) -> dict[str, np.ndarray]:
    """Scores {'heads': [L, N], 'mlp': [L, F]} of every head and neuron of every layer.

    Args:
      params: the parameter tree.
      names: `logical_names` tree.
      method: 'taylor' (needs `grads_list`) or 'weight'.
      grads_list: gradient trees of the loss, one per batch ('taylor').
    """
    if method not in IMPORTANCE:
        raise ValueError(f"importance={method!r} is unknown; use one of {IMPORTANCE}")
    p, n = params["layers"], names["layers"]
    out_head, out_mlp = _output_weight(n, "heads"), _output_weight(n, "mlp")
    if method == "weight":
        in_head = next(k for k in p if "heads" in n[k] and n[k][-1] != "embed")
        in_mlp = next(k for k in p if "mlp" in n[k] and n[k][-1] != "embed")
        return {
            "heads": _unit_norm(p[out_head], n[out_head], "heads")
            * _unit_norm(p[in_head], n[in_head], "heads"),
            "mlp": _unit_norm(p[out_mlp], n[out_mlp], "mlp")
            * _unit_norm(p[in_mlp], n[in_mlp], "mlp"),
        }
    if not grads_list:
        raise ValueError("importance='taylor' needs gradients of at least one batch")
    scores = {}
    for unit, key in (("heads", out_head), ("mlp", out_mlp)):
        w = np.asarray(p[key], np.float64)
        a = n[key].index(unit)
        other = tuple(i for i in range(w.ndim) if i not in (0, a))
        per_batch = [
            np.abs(np.sum(np.asarray(g["layers"][key], np.float64) * w, axis=other))
            for g in grads_list
        ]
        scores[unit] = np.mean(per_batch, axis=0)
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
    """(new model config, new params) keeping `n_heads` heads and `d_ff` neurons per layer.

    Args:
      params: the parameter tree.
      model_cfg: its model config.
      model: the model module (for the logical axis names).
      scores: `importance` output.
      n_heads: heads kept per layer.
      d_ff: MLP neurons kept per layer.
    """
    L, D, N, K, H, F, V = resolved_dims(model_cfg)
    if K != N and n_heads != N:
        raise ValueError(
            f"structured head pruning needs an MHA model (model.n_kv_heads={K} != n_heads={N}); "
            "prune MLP neurons only (keep every head)"
        )
    names = logical_names(model, model_cfg)
    head_idx = keep_indices(scores["heads"], n_heads)
    mlp_idx = keep_indices(scores["mlp"], d_ff)
    layers = {}
    for key, w in params["layers"].items():
        ns = names["layers"][key]
        for axis_name, idx in (("heads", head_idx), ("kv_heads", head_idx), ("mlp", mlp_idx)):
            if axis_name in ns and (axis_name != "kv_heads" or K == N):
                w = _gather(w, ns.index(axis_name), idx)
        layers[key] = w
    return structured_config(model_cfg, n_heads, d_ff), dict(params, layers=layers)


def structured_config(model_cfg, n_heads: int, d_ff: int):
    """The model config after keeping `n_heads` heads and `d_ff` neurons per layer (`d_head`
    made explicit, since it no longer follows from d_model / n_heads)."""
    L, D, N, K, H, F, V = resolved_dims(model_cfg)
    new_cfg = model_cfg.copy_and_resolve_references()
    with new_cfg.unlocked():
        new_cfg.n_heads = n_heads
        new_cfg.n_kv_heads = 0 if K == N else K
        new_cfg.d_head = H
        new_cfg.d_ff = d_ff
    return new_cfg
