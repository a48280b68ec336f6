"""Pallas TPU flash attention (jax.experimental.pallas.ops.tpu.flash_attention).

Flash attention tiles the logits so no [T, S] array exists: causal tiles above the diagonal are
skipped, packed documents are masked by segment ids. It has no sliding-window mask and needs as
many kv heads as query heads, so grouped kv heads (GQA) are repeated to N here (their gradients
sum back through the repeat). The scale is the kernel's `sm_scale`. Logits and softmax are f32.
"""

import jax
import jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas.ops.tpu import flash_attention as flash_lib

from kernels import placement
from kernels.splash import block_size

Array = jax.Array
_PLAIN_INTERPRETER = True  # see `_interpreted`


def _interpreted(fn):
    """`fn` with every Pallas TPU kernel it traces, the backward ones included, interpreted.

    `flash_attention` takes no `interpret` argument; the mode is a context
    (`pltpu.force_tpu_interpret_mode(params)`: every `pallas_call` traced under it gets
    `interpret=params`) read when a kernel is traced, and autodiff traces the backward kernels
    after the forward has returned, outside any context the forward set. So the forward and the
    backward each enter it, through a custom VJP over `jax.vjp`. `params=True` is the plain
    interpreter splash's `interpret=True` uses: with `pltpu.InterpretParams()` (the simulated-TPU
    interpreter) a kernel under `shard_map` on 8 simulated CPU devices never finished here.
    """

    @jax.custom_vjp
    def run(*args):
        with pltpu.force_tpu_interpret_mode(_PLAIN_INTERPRETER):
            return fn(*args)

    def fwd(*args):
        with pltpu.force_tpu_interpret_mode(_PLAIN_INTERPRETER):
            return jax.vjp(fn, *args)

    def bwd(vjp_fn, dout):
        with pltpu.force_tpu_interpret_mode(_PLAIN_INTERPRETER):
            return vjp_fn(dout)

    run.defvjp(fwd, bwd)
    return run


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
    """Flash attention, on each device's rows and heads (`placement.per_shard`).

    Args as `kernels.splash.attention`; `window` must be 0 (no local mask).

    Returns:
      [B, T, N, H] in the dtype of q.
    """
    if window:
        raise ValueError("Pallas TPU flash attention has no sliding-window (local) mask")
    interpret = placement.interpret()
    segments = {}
    if segment_ids_BT is not None:
        segments = {"q": segment_ids_BT, "kv": kv_segment_ids_BS}

    def kernel(q_BNTH, k_BNSH, v_BNSH, segments):
        T, S = q_BNTH.shape[2], k_BNSH.shape[2]
        bq, bk = (block, block) if block else (block_size(T), block_size(S))
        sizes = flash_lib.BlockSizes(
            block_q=bq,
            block_k_major=bk,
            block_k=bk,
            block_b=1,
            block_q_major_dkv=bq,
            block_k_major_dkv=bk,
            block_k_dkv=bk,
            block_q_dkv=bq,
            block_k_major_dq=bk,
            block_k_dq=bk,
            block_q_dq=bq,
        )
        ids = flash_lib.SegmentIds(segments["q"], segments["kv"]) if segments else None
        return flash_lib.flash_attention(
            q_BNTH,
            k_BNSH,
            v_BNSH,
            segment_ids=ids,
            causal=causal,
            sm_scale=scale,
            block_sizes=sizes,
        )

    if interpret:
        kernel = _interpreted(kernel)

    def local(q_BTNH, k_BSKH, v_BSKH, segments):
        G = q_BTNH.shape[2] // k_BSKH.shape[2]
        q_BNTH = q_BTNH.transpose(0, 2, 1, 3)
        k_BNSH = jnp.repeat(k_BSKH.transpose(0, 2, 1, 3), G, axis=1)  # head n -> kv head n // G
        v_BNSH = jnp.repeat(v_BSKH.transpose(0, 2, 1, 3), G, axis=1)
        out_BNTH = kernel(q_BNTH, k_BNSH, v_BNSH, segments)
        return out_BNTH.transpose(0, 2, 1, 3).astype(q_BTNH.dtype)

    return placement.per_shard(local, q_BTNH, k_BSKH, v_BSKH, segments)
