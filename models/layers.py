"""Pure-functional Transformer building blocks shared by every model family.

Logical axes (the only sharding vocabulary models may use; `parallel/` maps them to mesh axes):
  batch, length, kv_length  - sequence dimensions of activations
  embed                     - model width D
  mlp                       - MLP hidden width F
  heads, kv_heads, head_dim - attention heads N, key/value heads K, head size H
  vocab                     - vocabulary V
  layers                    - the stacked-layer dimension L (pipeline stages slice it)

Parameters are created boxed in `nn.LogicallyPartitioned` so that `nn.get_partition_spec` reads
their logical axes off an abstract `jax.eval_shape(init)`; `apply` functions take unboxed arrays.
Activations are annotated with `constrain`, a no-op unless a mesh and logical rules are active.
"""

import contextlib
import contextvars
import functools
import math
from collections.abc import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -1e30  # finite, so a fully masked row gives a uniform softmax instead of NaN


def param(
    key: Array, shape: Sequence[int], axes: Sequence[str | None], init: Callable, dtype=jnp.float32
) -> nn.LogicallyPartitioned:
    """Creates one parameter boxed with its logical axes."""
    assert len(shape) == len(axes), (shape, axes)
    return nn.LogicallyPartitioned(init(key, tuple(shape), dtype), names=tuple(axes))


def normal(std: float) -> Callable:
    return nn.initializers.normal(stddev=std)


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
    """Annotates an activation with logical axes (sharding hint for the SPMD partitioner)."""
    return nn.with_logical_constraint(x, tuple(axes))


def _bcast(w_D: Array, x: Array) -> Array:
    """Broadcasts a [D] weight against x[..., D] explicitly (tests make rank promotion an error)."""
    return w_D.reshape((1,) * (x.ndim - 1) + w_D.shape)


def layer_norm(x_BTD: Array, scale_D: Array, bias_D: Array | None, eps: float = 1e-6) -> Array:
    """LayerNorm computed in f32 whatever the activation dtype."""
    x = x_BTD.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps) * _bcast(scale_D, x)
    if bias_D is not None:
        y = y + _bcast(bias_D, x)
    return y.astype(x_BTD.dtype)


def rotary_tables(positions_BT: Array, head_dim: int, theta: float = 10000.0) -> dict:
    """cos and sin tables [B, T, H] of `rotary` for these positions.

    A model computes them once per forward pass and hands them to every layer: left inside each
    layer's `rotary`, XLA:CPU evaluated the cos and sin of [B, T, H/2] twice per layer (q and k,
    CSE does not merge the hoisted copies), about 2% of the reference train step.
    """
    inv_freq_h = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angle_BTh = positions_BT[..., None].astype(jnp.float32) * inv_freq_h[None, None]
    return {
        "cos": jnp.concatenate([jnp.cos(angle_BTh)] * 2, -1),
        "sin": jnp.concatenate([jnp.sin(angle_BTh)] * 2, -1),
    }


def rotary(
    x_BTNH: Array, positions_BT: Array | None, theta: float = 10000.0, *, tables=None
) -> Array:
    """Rotary position embedding, 'rotate half' convention over the full head dim.

    `tables` (from `rotary_tables`, same positions) skips recomputing cos and sin;
    `positions_BT` is then unused.
    """
    if tables is None:
        tables = rotary_tables(positions_BT, x_BTNH.shape[-1], theta)
    cos_BT1H, sin_BT1H = tables["cos"][:, :, None, :], tables["sin"][:, :, None, :]
    x1, x2 = jnp.split(x_BTNH, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x_BTNH * cos_BT1H + rotated * sin_BT1H).astype(x_BTNH.dtype)


def attention_bias(
    segment_ids_BT: Array, causal: bool, kv_segment_ids_BS: Array | None = None
) -> Array:
    """Additive f32 bias [B, 1, T, S]: 0 within the same packed document (and, if causal, at or
    before the query), NEG_INF elsewhere. Built once per forward pass and shared by all layers.

    Padding (segment 0) attends only to padding, so no row is ever fully masked.
    """
    kv = segment_ids_BT if kv_segment_ids_BS is None else kv_segment_ids_BS
    mask_BTS = segment_ids_BT[:, :, None] == kv[:, None, :]
    if causal:
        T, S = segment_ids_BT.shape[1], kv.shape[1]
        mask_BTS = mask_BTS & (jnp.arange(T)[:, None] >= jnp.arange(S)[None, :])[None]
    return jnp.where(mask_BTS, 0.0, NEG_INF).astype(jnp.float32)[:, None]


_DENSE_INPUTS: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
    "dense_inputs", default=None
)


@contextlib.contextmanager
def intercept_dense_inputs(fn: Callable[[Array], Array]) -> Iterator[None]:
    """Within the block, every `dense` passes its flattened input x [rows, in] through `fn`
    first (what flax's `nn.intercept_methods` does for module methods, here for the pure
    functions). An apply wrapper enters it around the model while the model is traced, so the
    transform is part of the jitted program and the model code stays ignorant of it."""
    token = _DENSE_INPUTS.set(fn)
    try:
        yield
    finally:
        _DENSE_INPUTS.reset(token)


def dense(x: Array, w: Array | dict, n_in: int = 1) -> Array:
    """Contracts the last `n_in` dims of x with the first `n_in` of w, as one 2-D matmul.

    Equivalent to an einsum such as 'BTD,DNH->BTNH', but flattening to [rows, in] @ [in, out]
    first: XLA:CPU fuses the backward pass of 2-D dots with neighbouring elementwise ops (GELU)
    far better than of 3-D einsums (measured: MLP fwd+bwd 171 ms -> 91 ms at B*T=4096, D=256).

    `w` may be low-rank factors `{"a": [in..., r], "b": [r, out...]}` (compress/lowrank.py),
    computed as two matmuls. An `intercept_dense_inputs` transform applies to x [rows, in].
    """
    if isinstance(w, dict):
        return dense(dense(x, w["a"], n_in), w["b"], 1)
    lead, inner = x.shape[: x.ndim - n_in], x.shape[x.ndim - n_in :]
    assert inner == w.shape[:n_in], (x.shape, w.shape)
    out = w.shape[n_in:]
    x_RI = x.reshape(-1, math.prod(inner))
    transform = _DENSE_INPUTS.get()
    if transform is not None:
        x_RI = transform(x_RI)
    y = x_RI @ w.reshape(math.prod(inner), -1).astype(x.dtype)
    return y.reshape(*lead, *out)


def _softmax_attention_fwd(q_BKXH, k_BKSH, v_BKSH, bias_B1XS, logits_dtype):
    logits_BKXS = jnp.einsum("BKXH,BKSH->BKXS", q_BKXH, k_BKSH, preferred_element_type=logits_dtype)
    logits_BKXS = logits_BKXS + bias_B1XS.astype(logits_dtype)
    probs_BKXS = jax.nn.softmax(logits_BKXS, axis=-1).astype(v_BKSH.dtype)
    out_BKXH = jnp.einsum("BKXS,BKSH->BKXH", probs_BKXS, v_BKSH)
    return out_BKXH, (q_BKXH, k_BKSH, v_BKSH, probs_BKXS, out_BKXH)


def _softmax_attention_bwd(logits_dtype, res, dout_BKXH):
    # The softmax backward written with the saved output (FlashAttention's D = rowsum(dO * O)):
    # autodiff's version makes more passes over the [X, S] tensors, which dominate on CPU.
    q_BKXH, k_BKSH, v_BKSH, probs_BKXS, out_BKXH = res
    dv_BKSH = jnp.einsum("BKXS,BKXH->BKSH", probs_BKXS, dout_BKXH)
    dprobs_BKXS = jnp.einsum(
        "BKXH,BKSH->BKXS", dout_BKXH, v_BKSH, preferred_element_type=logits_dtype
    )
    rowsum_BKX1 = (dout_BKXH * out_BKXH).astype(logits_dtype).sum(-1, keepdims=True)
    dlogits_BKXS = (probs_BKXS * (dprobs_BKXS - rowsum_BKX1)).astype(q_BKXH.dtype)
    dq_BKXH = jnp.einsum("BKXS,BKSH->BKXH", dlogits_BKXS, k_BKSH)
    dk_BKSH = jnp.einsum("BKXS,BKXH->BKSH", dlogits_BKXS, q_BKXH)
    return dq_BKXH, dk_BKSH, dv_BKSH, None  # the mask bias gets no gradient


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _softmax_attention(q_BKXH, k_BKSH, v_BKSH, bias_B1XS, logits_dtype):
    return _softmax_attention_fwd(q_BKXH, k_BKSH, v_BKSH, bias_B1XS, logits_dtype)[0]


_softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def dot_attention(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    bias_B1TS: Array,
    *,
    scale: float | None = None,
    logits_dtype=jnp.float32,
    causal_blocks: int = 1,
) -> Array:
    """Softmax attention with grouped key/value heads (MHA when K == N, MQA when K == 1).

    The G = N / K query heads sharing a key/value head are folded into the query-length axis
    (X = G * T), so every case is one batched [X, H] @ [H, S] matmul per (batch, kv head): on
    XLA:CPU this head-major 4-D layout with an additive bias, plus a hand-written backward, runs
    attention fwd+bwd 2.3x faster than a 'BTNH,BSNH->BNTS' einsum with a select mask and autodiff
    (37 vs 84 ms at B=16, T=256, N=4, H=64). The output has the dtype of `v`. The bias is not
    differentiated.

    Args:
      q_BTNH, k_BSKH, v_BSKH: queries, keys and values.
      bias_B1TS: additive mask bias from `attention_bias`.
      scale: multiplies the logits; None is 1/sqrt(H) (muP passes ~1/H, see models/mup.py).
      logits_dtype: dtype of the logits q.k, the softmax and its backward (f32 by default,
        whatever the activation dtype).
      causal_blocks: > 1 splits the queries into that many blocks, each attending only to the
        keys up to its last query: exact when `bias_B1TS` masks every key after its query (a
        causal mask, with or without packed segments), and it skips the masked blocks'
        work (here at T = 256, 4 blocks: fwd+bwd 6.2 -> 3.9 ms per layer at batch 4).
    """
    T, S = q_BTNH.shape[1], k_BSKH.shape[1]
    if causal_blocks > 1 and T == S and T >= 2 * causal_blocks:
        ends = [T * (i + 1) // causal_blocks for i in range(causal_blocks)]
        starts = [0, *ends[:-1]]
        return jnp.concatenate(
            [
                dot_attention(
                    q_BTNH[:, t0:t1],
                    k_BSKH[:, :t1],
                    v_BSKH[:, :t1],
                    bias_B1TS[:, :, t0:t1, :t1],
                    scale=scale,
                    logits_dtype=logits_dtype,
                )
                for t0, t1 in zip(starts, ends, strict=True)
            ],
            axis=1,
        )
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    G = N // K
    scale = H**-0.5 if scale is None else scale
    q_BTNH = q_BTNH * jnp.asarray(scale, q_BTNH.dtype)
    q_BKXH = q_BTNH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    k_BKSH = k_BSKH.transpose(0, 2, 1, 3)
    v_BKSH = v_BSKH.transpose(0, 2, 1, 3)
    bias_B1XS = bias_B1TS if G == 1 else jnp.tile(bias_B1TS, (1, 1, G, 1))
    out_BKXH = _softmax_attention(q_BKXH, k_BKSH, v_BKSH, bias_B1XS, jnp.dtype(logits_dtype))
    return out_BKXH.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}
