"""cuDNN flash attention for NVIDIA GPUs, through `jax.nn.dot_product_attention`.

cuDNN skips causal and sliding-window tiles itself and has its own partitioning rules, so it needs
no `shard_map`. Its public interface has no segment ids: packed documents become a boolean mask
[B, 1, T, S] that JAX turns into an additive bias of the input dtype, so a packed batch still
holds one T x S array per row (2 bytes per entry in bf16; an unpacked batch holds none). Inputs
must be bf16 or fp16, head size a multiple of 8 and at most 256 (128 before Hopper).
"""

import jax

Array = jax.Array


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
) -> Array:
    """cuDNN attention; args as `kernels.splash.attention`. Returns [B, T, N, H]."""
    mask_B1TS = None
    if segment_ids_BT is not None:
        mask_B1TS = segment_ids_BT[:, None, :, None] == kv_segment_ids_BS[:, None, None, :]
    local = None
    if window:  # (left, right) keys beside the query: the window w includes the query
        local = (window - 1, 0 if causal else window - 1)
    return jax.nn.dot_product_attention(
        q_BTNH,
        k_BSKH,
        v_BSKH,
        mask=mask_B1TS,
        scale=scale,
        is_causal=causal,
        local_window_size=local,
        implementation="cudnn",
    )
