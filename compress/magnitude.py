"""Unstructured magnitude pruning: keep-masks for the matmul weights of the layers.

Prunable weights are the matrices the quantizer would quantize (compress/quant.py `input_axes`)
except vocabulary tables: the embedding is a lookup as much as a matmul, and pruning it removes
whole token meanings, so it stays dense (the usual choice; Zhu & Gupta 2017, Frantar & Alistarh
2023). A mask is True where a weight is kept.

Scopes: 'global' ranks |w| over every prunable weight of the model at once (layers that matter
less lose more); 'layer' prunes every matrix of every layer (each `layers` slice of each stacked
weight) to the same sparsity. The k = floor(sparsity x n) smallest magnitudes go; ties at the
threshold are kept, so an already-pruned (zero) weight is always among the first to go and masks
only grow sparser as the sparsity rises.
"""

import jax
import jax.numpy as jnp

from compress.quant import input_axes, is_names, logical_names

SCOPES = ("global", "layer")


def prunable_spec(model, model_cfg) -> dict:
    """Tree of bools (structure of the params): True for the weights pruning may zero."""
    return jax.tree.map(
        lambda names: input_axes(names) is not None and "vocab" not in names,
        logical_names(model, model_cfg),
        is_leaf=is_names,
    )


def _kth_smallest(a_RN: jax.Array, fraction) -> jax.Array:
    """Per row, the magnitude at rank floor(fraction x n) (the smallest kept one), [R, 1]."""
    n = a_RN.shape[-1]
    k = jnp.clip(jnp.floor(fraction * n).astype(jnp.int32), 0, n - 1)
    return jnp.take(jnp.sort(a_RN, axis=-1), k, axis=-1)[:, None]


def magnitude_masks(params, prunable, sparsity, scope: str = "global"):
    """Keep-masks (bool, shapes of the params) removing `sparsity` (in [0, 1), a float or a traced
    scalar) of the `prunable_spec` weights, over the model or per layer (`scope`)."""
    if scope not in SCOPES:
        raise ValueError(f"prune scope={scope!r} is unknown; use one of {SCOPES}")
    leaves, treedef = jax.tree.flatten(params)
    flags = jax.tree.leaves(prunable)
    if scope == "global":
        pool = [jnp.abs(w).reshape(-1) for w, f in zip(leaves, flags, strict=True) if f]
        thr = _kth_smallest(jnp.concatenate(pool)[None], sparsity)[0, 0]
        keep = lambda w: jnp.abs(w) >= thr
    else:  # stacked [L, ...]: one threshold per layer

        def keep(w):
            a_LN = jnp.abs(w).reshape(w.shape[0], -1)
            return (a_LN >= _kth_smallest(a_LN, sparsity)).reshape(w.shape)

    # A zero sparsity keeps everything, even weights that are exactly zero.
    masks = [
        jnp.where(sparsity > 0, keep(w), True) if f else jnp.ones(w.shape, bool)
        for w, f in zip(leaves, flags, strict=True)
    ]
    return jax.tree.unflatten(treedef, masks)


def apply_masks(params, masks):
    return jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros((), w.dtype)), params, masks)


def sparsity_of(params, prunable) -> float:
    """Fraction of the prunable weights that are exactly zero (host side)."""
    zeros = total = 0
    for w, f in zip(jax.tree.leaves(params), jax.tree.leaves(prunable), strict=True):
        if f:
            zeros += int((jnp.asarray(w) == 0).sum())
            total += w.size
    return zeros / max(total, 1)
