"""Symmetric per-channel integer quantization of matmul weights, and fake-quant for training.

A weight is quantized over its *input* axes (the ones its matmul contracts), so each output
channel gets its own scale `max|w| / qmax`, `qmax = 2^(bits-1) - 1`, which factors out of the
matmul; `q = clip(round(w / scale), -qmax, qmax)` never clips, so every element's error is at
most scale / 2. The input axes come from the logical axis names (models/layers.py): a weight
whose last axis is `embed` contracts everything else (o, wo); any other matrix contracts
`embed`; embedding tables get one scale per `vocab` row; vectors and `layers` are never reduced.

A quantized leaf is stored as `{"int8": int8 array, "scale": f32 array}` (int4 one per byte),
dequantized inside the jitted forward pass (`wrap_apply`). Fake quantization (QAT) rounds in the
forward pass with a straight-through gradient, for weights and for the inputs of every dense
matmul (per row; `models.layers.intercept_dense_inputs`: the model code knows nothing of it).
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.layers import intercept_dense_inputs

QUANT_KEYS = ("int8", "scale")


def qmax(bits: int) -> int:
    if not 2 <= bits <= 8:
        raise ValueError(f"quantization bits={bits} must be between 2 and 8 (int8 storage)")
    return 2 ** (bits - 1) - 1


def input_axes(names: tuple) -> tuple[int, ...] | None:
    """Axes a weight with these logical axis names contracts (None: not a matmul weight)."""
    dims = [i for i, n in enumerate(names) if n != "layers"]
    if len(dims) < 2:
        return None  # a vector (per layer): norm scales, biases
    if "vocab" in names:  # an embedding table or unembedding: one scale per vocabulary id
        return tuple(i for i in dims if names[i] != "vocab")
    if names[-1] == "embed":  # projects into the residual stream: contract the rest
        return tuple(i for i in dims if i != len(names) - 1)
    return tuple(i for i in dims if names[i] == "embed")


def logical_names(model, model_cfg) -> dict:
    """Tree (structure of the params) of each parameter's logical axis names, from `init`."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), model_cfg))
    return jax.tree.map(
        lambda b: tuple(b.names), boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )


def is_names(x) -> bool:
    return isinstance(x, tuple) and all(n is None or isinstance(n, str) for n in x)


def quant_spec(model, model_cfg) -> dict:
    """Tree (structure of the params) of each leaf's input axes, or None for unquantized leaves."""
    return jax.tree.map(input_axes, logical_names(model, model_cfg), is_leaf=is_names)


def quantize(w: jax.Array, axes: tuple[int, ...], bits: int = 8) -> tuple[jax.Array, jax.Array]:
    """(q int8, scale f32) with `w ~= q * scale`, one scale per output channel."""
    m, w = qmax(bits), w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(w), axis=axes, keepdims=True)
    # An all-zero channel (pruned) gets scale 1 so that it stays exactly zero without 0 / 0.
    scale = jnp.where(amax > 0, amax / m, 1.0)
    return jnp.clip(jnp.round(w / scale), -m, m).astype(jnp.int8), scale


def dequantize(q: jax.Array, scale: jax.Array, dtype=jnp.float32) -> jax.Array:
    return (q.astype(jnp.float32) * scale).astype(dtype)


def fake_quant(w: jax.Array, axes: tuple[int, ...], bits: int) -> jax.Array:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through)."""
    q, scale = quantize(jax.lax.stop_gradient(w), axes, bits)
    return w + jax.lax.stop_gradient(dequantize(q, scale, w.dtype) - w)


def fake_quant_rows(x_RI: jax.Array, bits: int) -> jax.Array:
    """Per-row dynamic fake quantization of matmul inputs [rows, in] (activations), with STE."""
    return fake_quant(x_RI, (x_RI.ndim - 1,), bits)


def is_quantized(x) -> bool:
    return isinstance(x, dict) and tuple(sorted(x)) == QUANT_KEYS


def _map_weights(fn, spec, params):
    """`fn(w, axes)` for every matmul weight (spec not None), other leaves unchanged."""
    is_axes = lambda x: x is None or isinstance(x, tuple)
    return jax.tree.map(lambda a, w: w if a is None else fn(w, a), spec, params, is_leaf=is_axes)


def quantize_params(params, spec, bits: int = 8):
    """Replaces every matmul weight (spec not None) by `{"int8": q, "scale": s}`."""

    def one(w, axes):
        q, scale = quantize(w, axes, bits)
        return {"int8": q, "scale": scale}

    return _map_weights(one, spec, params)


def dequantize_params(params, dtype=jnp.float32):
    """The f32 parameter tree of a (possibly partly) quantized tree; other leaves unchanged."""
    return jax.tree.map(
        lambda x: dequantize(x["int8"], x["scale"], dtype) if is_quantized(x) else x,
        params,
        is_leaf=is_quantized,
    )


def wrap_apply(
    model, model_cfg, weight_bits: int = 0, act_bits: int = 0, apply_fn: Callable | None = None
) -> Callable:
    """`apply_fn` (default `model.apply`; a pipelined apply, ...) taking int8-stored trees and
    fake-quantizing the matmul weights at `weight_bits` and dense-matmul inputs at `act_bits`
    (0: off), with the same `apply(params, batch, cfg, *, rngs=None)` signature."""
    spec = quant_spec(model, model_cfg) if weight_bits else None
    run = apply_fn or model.apply

    def apply(params, batch, cfg, *, rngs=None):
        params = dequantize_params(params, jnp.float32)
        if weight_bits:
            params = _map_weights(lambda w, a: fake_quant(w, a, weight_bits), spec, params)
        if not act_bits:
            return run(params, batch, cfg, rngs=rngs)
        with intercept_dense_inputs(lambda x_RI: fake_quant_rows(x_RI, act_bits)):
            return run(params, batch, cfg, rngs=rngs)

    return apply
