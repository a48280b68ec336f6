"""Symmetric per-channel integer quantization of matmul weights, and fake-quant for training.

A weight is quantized over its *input* axes (the ones its matmul contracts), so each output
channel gets its own scale `max|w| / qmax` with `qmax = 2^(bits-1) - 1` (127 for int8, 7 for
int4) and `q = clip(round(w / scale), -qmax, qmax)`. Because the scale is per output channel it
factors out of the matmul: `x @ (q * s) = (x @ q) * s`. Round to nearest never clips here
(|w| / scale <= qmax), so the error of every element is at most scale / 2.

Which axes are inputs is read off the logical axis names every family gives its parameters
(models/layers.py): a weight whose last axis is `embed` maps into the residual stream and
contracts everything else (o: heads x head_dim, wo: mlp); any other matrix contracts `embed`
(q, k, v, wi, the unembedding); embedding tables (a `vocab` axis) get one scale per vocabulary
row, which serves both the lookup and the tied unembedding. Vectors (norm scales, biases) and
the `layers` axis are never reduced over: every layer has its own scales.

Stored form: a quantized leaf becomes `{"int8": int8 array, "scale": f32 array}` (scale keeps
the reduced axes as size 1), so checkpoints hold one byte per weight; int4 values are stored
one per int8 byte (not packed). `dequantize_params` turns the tree back into f32 inside the
jitted forward pass (`wrap_apply`).

Fake quantization (QAT) rounds in the forward pass and passes the gradient straight through
(STE: d fake_quant(w) / dw = 1), for weights (`quant.weight_bits`) and for the input
activations of every dense matmul (`quant.act_bits`, per-row dynamic scales), which `wrap_apply`
inserts with `models.layers.intercept_dense_inputs`: the model code knows nothing of it.
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


def _scale(w: jax.Array, axes: tuple[int, ...], bits: int) -> jax.Array:
    amax = jnp.max(jnp.abs(w.astype(jnp.float32)), axis=axes, keepdims=True)
    # An all-zero channel (pruned) gets scale 1 so that it stays exactly zero without 0 / 0.
    return jnp.where(amax > 0, amax / qmax(bits), 1.0)


def quantize(w: jax.Array, axes: tuple[int, ...], bits: int = 8) -> tuple[jax.Array, jax.Array]:
    """(q int8, scale f32) with `w ~= q * scale`, one scale per output channel."""
    scale = _scale(w, axes, bits)
    m = qmax(bits)
    q = jnp.clip(jnp.round(w.astype(jnp.float32) / scale), -m, m).astype(jnp.int8)
    return q, scale


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


def quantize_params(params, spec, bits: int = 8):
    """Replaces every matmul weight (spec not None) by `{"int8": q, "scale": s}`."""

    def one(axes, w):
        return w if axes is None else dict(zip(QUANT_KEYS, quantize(w, axes, bits), strict=True))

    return jax.tree.map(
        one,
        spec,
        params,
        is_leaf=lambda x: x is None or isinstance(x, tuple),
    )


def dequantize_params(params, dtype=jnp.float32):
    """The f32 parameter tree of a (possibly partly) quantized tree; other leaves unchanged."""
    return jax.tree.map(
        lambda x: dequantize(x["int8"], x["scale"], dtype) if is_quantized(x) else x,
        params,
        is_leaf=is_quantized,
    )


def fake_quant_params(params, spec, bits: int):
    return jax.tree.map(
        lambda axes, w: w if axes is None else fake_quant(w, axes, bits),
        spec,
        params,
        is_leaf=lambda x: x is None or isinstance(x, tuple),
    )


def wrap_apply(
    model, model_cfg, weight_bits: int = 0, act_bits: int = 0, apply_fn: Callable | None = None
) -> Callable:
    """`model.apply` that accepts int8-stored trees and fake-quantizes weights and activations.

    Args:
      model: the family module (its logical axis names give each weight's input axes).
      model_cfg: its model config.
      weight_bits: fake-quantize every matmul weight per output channel (0: off).
      act_bits: fake-quantize the input of every dense matmul per row (0: off).
      apply_fn: what runs the model (default `model.apply`), e.g. a pipelined apply.

    Returns:
      A function with the `apply(params, batch, cfg, *, rngs=None)` signature, so loss factories
      and eval steps use it unchanged.
    """
    spec = quant_spec(model, model_cfg) if weight_bits else None
    run = apply_fn or model.apply

    def apply(params, batch, cfg, *, rngs=None):
        params = dequantize_params(params, jnp.float32)
        if weight_bits:
            params = fake_quant_params(params, spec, weight_bits)
        if not act_bits:
            return run(params, batch, cfg, rngs=rngs)
        with intercept_dense_inputs(lambda x_RI: fake_quant_rows(x_RI, act_bits)):
            return run(params, batch, cfg, rngs=rngs)

    return apply
