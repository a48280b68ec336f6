"""Fused attention behind one call, `attention(..., impl=)`, and what each kernel can mask.

Every kernel takes the mask as data, never as a [B, 1, T, S] bias: a causal flag, an optional
local window and optional segment ids (packed documents). They differ in what else they take:

| impl   | hardware    | causal | segment ids | local window | GQA                 | dtypes    |
| ------ | ----------- | ------ | ----------- | ------------ | ------------------- | --------- |
| splash | TPU (Pallas)| yes    | yes         | yes          | native              | f32, bf16 |
| flash  | TPU (Pallas)| yes    | yes         | no           | kv heads repeated   | f32, bf16 |
| cudnn  | NVIDIA GPU  | yes    | as a mask*  | yes (causal) | native              | bf16      |
(*) cuDNN's public interface has no segment ids (kernels/cudnn.py).

None of them takes a per-head bias (T5's relative positions), attention dropout or bf16 logits
(their softmax is always f32). The Pallas kernels run interpreted on CPU (kernels/placement.py).
"""

import jax

Array = jax.Array

IMPLS = ("splash", "flash", "cudnn")
LOCAL_WINDOW = ("splash", "cudnn")  # kernels with a sliding-window mask
HALF_ONLY = ("cudnn",)  # kernels that take bf16 / fp16 inputs only


def attention(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    *,
    impl: str,
    causal: bool,
    segment_ids_BT: Array | None = None,
    kv_segment_ids_BS: Array | None = None,
    window: int = 0,
    scale: float | None = None,
) -> Array:
    """Softmax attention by the kernel `impl`, with grouped kv heads (query head n = k * G + g).

    Args:
      q_BTNH, k_BSKH, v_BSKH: queries, keys and values, N % K == 0.
      impl: one of IMPLS.
      causal: key j is visible to query i only if j <= i.
      segment_ids_BT, kv_segment_ids_BS: packed-document ids; a query attends only keys with its
        id (padding, id 0, attends padding). None: one document per row. kv_segment_ids_BS
        defaults to segment_ids_BT (self-attention).
      window: local attention over the `window` latest keys (causal; |i - j| < window when not
        causal); 0 = none.
      scale: multiplies the logits; None is 1/sqrt(H).

    Returns:
      [B, T, N, H] in the dtype of q.
    """
    if segment_ids_BT is not None and kv_segment_ids_BS is None:
        kv_segment_ids_BS = segment_ids_BT
    scale = q_BTNH.shape[-1] ** -0.5 if scale is None else scale
    kw = dict(
        causal=causal,
        segment_ids_BT=segment_ids_BT,
        kv_segment_ids_BS=kv_segment_ids_BS,
        window=window,
        scale=scale,
    )
    if impl == "splash":
        from kernels import splash

        return splash.attention(q_BTNH, k_BSKH, v_BSKH, **kw)
    if impl == "flash":
        from kernels import flash

        return flash.attention(q_BTNH, k_BSKH, v_BSKH, **kw)
    if impl == "cudnn":
        from kernels import cudnn

        return cudnn.attention(q_BTNH, k_BSKH, v_BSKH, **kw)
    raise ValueError(f"attention impl {impl!r} is unknown; choose one of {IMPLS}")
