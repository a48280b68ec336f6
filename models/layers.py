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

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -1e30  # finite, so a fully masked row gives a uniform softmax instead of NaN


def param(key: Array, shape: Sequence[int], axes: Sequence[str | None], init: Callable,
          dtype=jnp.float32) -> nn.LogicallyPartitioned:
    """Creates one parameter boxed with its logical axes."""
    assert len(shape) == len(axes), (shape, axes)
    return nn.LogicallyPartitioned(init(key, tuple(shape), dtype), names=tuple(axes))


def normal(std: float) -> Callable:
    return nn.initializers.normal(stddev=std)


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
    """Annotates an activation with logical axes (sharding hint for the SPMD partitioner)."""
    return nn.with_logical_constraint(x, tuple(axes))


def _bcast(w_D: Array, x: Array) -> Array:
    """Explicitly broadcasts a [D] weight against x[..., D] (rank promotion is an error in tests)."""
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


def rms_norm(x_BTD: Array, scale_D: Array, eps: float = 1e-6) -> Array:
    x = x_BTD.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps) * _bcast(scale_D, x)
    return y.astype(x_BTD.dtype)


def rotary(x_BTNH: Array, positions_BT: Array, theta: float = 10000.0) -> Array:
    """Rotary position embedding, 'rotate half' convention over the full head dim."""
    H = x_BTNH.shape[-1]
    inv_freq_h = theta ** (-jnp.arange(0, H, 2, dtype=jnp.float32) / H)
    angle_BTh = positions_BT[..., None].astype(jnp.float32) * inv_freq_h[None, None]
    cos_BT1H = jnp.concatenate([jnp.cos(angle_BTh)] * 2, -1)[:, :, None, :]
    sin_BT1H = jnp.concatenate([jnp.sin(angle_BTh)] * 2, -1)[:, :, None, :]
    x1, x2 = jnp.split(x_BTNH, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (x_BTNH * cos_BT1H + rotated * sin_BT1H).astype(x_BTNH.dtype)


def attention_mask(segment_ids_BT: Array, causal: bool,
                   kv_segment_ids_BS: Array | None = None) -> Array:
    """Boolean mask [B, 1, T, S]: same packed document and (if causal) no look-ahead.

    Padding (segment 0) attends only to padding, so no row is ever fully masked.
    """
    kv = segment_ids_BT if kv_segment_ids_BS is None else kv_segment_ids_BS
    mask_BTS = segment_ids_BT[:, :, None] == kv[:, None, :]
    if causal:
        T, S = segment_ids_BT.shape[1], kv.shape[1]
        mask_BTS = mask_BTS & (jnp.arange(T)[:, None] >= jnp.arange(S)[None, :])[None]
    return mask_BTS[:, None]


def dot_attention(q_BTNH: Array, k_BSKH: Array, v_BSKH: Array, mask_B1TS: Array) -> Array:
    """Softmax attention with grouped key/value heads (MHA when K == N, MQA when K == 1).

    Logits and softmax are computed in f32; the output has the dtype of `v`.
    """
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    q_BTKGH = q_BTNH.reshape(B, T, K, N // K, H)
    logits_BKGTS = jnp.einsum('BTKGH,BSKH->BKGTS', q_BTKGH, k_BSKH,
                              preferred_element_type=jnp.float32) * (H ** -0.5)
    logits_BKGTS = jnp.where(mask_B1TS[:, :, None], logits_BKGTS, NEG_INF)
    probs_BKGTS = jax.nn.softmax(logits_BKGTS, axis=-1).astype(v_BSKH.dtype)
    out_BTKGH = jnp.einsum('BKGTS,BSKH->BTKGH', probs_BKGTS, v_BSKH)
    return out_BTKGH.reshape(B, T, N, H)


ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False),
    'relu': jax.nn.relu,
    'silu': jax.nn.silu,
}
