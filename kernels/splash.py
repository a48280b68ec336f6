"""Pallas TPU splash attention (jax.experimental.pallas.ops.tpu.splash_attention).

Splash is block-sparse flash attention: the static mask (causal, local window or full) is
analysed per [block_q, block_kv] tile when the kernel is built, so fully masked tiles are never
loaded or computed, and packed documents are masked inside tiles by segment ids. Query heads are
grouped onto kv heads natively (GQA: query head n uses kv head n // (N / K)). The logit scale is
folded into q (splash applies none). Logits, softmax and accumulators are f32 whatever the input
dtype. Sequence lengths must be multiples of 128 (the TPU lane width).
"""

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from kernels import placement

Array = jax.Array


def block_size(length: int, largest: int = 512) -> int:
    """The largest tile in (largest, ..., 256, 128) dividing `length` (a multiple of 128)."""
    if length % 128:
        raise ValueError(f"the Pallas TPU kernels need lengths divisible by 128, got {length}")
    b = largest
    while length % b:
        b //= 2
    return b


def make_mask(T: int, S: int, *, causal: bool, window: int) -> mask_lib.Mask:
    """One head's static mask [T, S]: causal (j <= i), local (the `window` latest keys when
    causal, |i - j| < window otherwise; window 0 = none) or full."""
    if window:
        return mask_lib.LocalMask((T, S), (window - 1, 0 if causal else window - 1), offset=0)
    if causal:
        return mask_lib.CausalMask((T, S))
    return mask_lib.FullMask((T, S))


def attention(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    *,
    causal: bool,
    segment_ids_BT: Array | None = None,
    kv_segment_ids_BS: Array | None = None,
    window: int = 0,
    scale: float,
    block: int | None = None,
) -> Array:
    """Splash attention, on each device's rows and heads (`placement.per_shard`).

    Args:
      q_BTNH, k_BSKH, v_BSKH: queries, keys, values; K kv heads with N % K == 0.
      causal: key j is visible to query i only if j <= i.
      segment_ids_BT, kv_segment_ids_BS: packed-document ids (a query attends only keys of its
        own segment); None: one document per row.
      window: the local window w (0: none).
      scale: multiplies the logits (folded into q).
      block: tile size of every block (None: the largest of 512, 256, 128 dividing T and S).

    Returns:
      [B, T, N, H] in the dtype of q.
    """
    interpret = placement.interpret()
    segments = {}
    if segment_ids_BT is not None:
        segments = {"q": segment_ids_BT, "kv": kv_segment_ids_BS}

    def local(q_BTNH, k_BSKH, v_BSKH, segments):
        _, T, N, _ = q_BTNH.shape
        S = k_BSKH.shape[1]
        bq, bkv = (block, block) if block else (block_size(T), block_size(S))
        sizes = kernel_lib.BlockSizes(
            block_q=bq,
            block_kv=bkv,
            block_kv_compute=bkv,
            block_q_dkv=bq,
            block_kv_dkv=bkv,
            block_kv_dkv_compute=bkv,
            block_q_dq=bq,
            block_kv_dq=bkv,
        )
        mask = make_mask(T, S, causal=causal, window=window)
        splash = kernel_lib.make_splash_mha(
            mask_lib.MultiHeadMask([mask] * N),
            block_sizes=sizes,
            head_shards=1,
            q_seq_shards=1,
            interpret=interpret,
        )
        q_BNTH = (q_BTNH * jnp.asarray(scale, q_BTNH.dtype)).transpose(0, 2, 1, 3)
        k_BKSH = k_BSKH.transpose(0, 2, 1, 3)
        v_BKSH = v_BSKH.transpose(0, 2, 1, 3)
        ids = kernel_lib.SegmentIds(segments["q"], segments["kv"]) if segments else None
        out_BNTH = jax.vmap(splash)(q_BNTH, k_BKSH, v_BKSH, segment_ids=ids)
        return out_BNTH.transpose(0, 2, 1, 3).astype(q_BTNH.dtype)

    return placement.per_shard(local, q_BTNH, k_BSKH, v_BSKH, segments)
