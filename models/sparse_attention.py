"""Sparse and local attention (Child et al. 2019), computed blockwise, configurable per layer.

Each pattern says which key j a query i may attend to (0-based positions, both in the same packed
document; `pattern_mask` is the reference). With causal masking:
  dense          j <= i
  local(w)       i - w < j <= i                                  (the w latest keys, i included)
  strided(l)     j <= i and (i - j < l or (i - j) % l == 0)      (the l latest, then every l-th)
  fixed(l, c)    j <= i and (j // l == i // l or j % l >= l - c) (own block of l, then the last c
                                                                  "summary" keys of every block)
Bidirectional (encoder) variants drop `j <= i` and make the local band symmetric:
  dense: all j; local(w): |i - j| < w; strided(l): |i - j| < l or (i - j) % l == 0;
  fixed(l, c): j // l == i // l or j % l >= l - c.
These are the union ("merged head") forms of the paper's two factorised heads, so one attention
call per layer computes them. GPT-3 alternates dense and locally banded sparse layers
(`sparse.layers='alternate'`).

Blockwise computation: keys are never scored against every query. The sequence is padded to a
multiple of the block b and cut into C = ceil(T / b) blocks; a query block scores only
  local    its band of key blocks (b = w: itself and the previous one)      -> T * 2w scores
  strided  the band (b = l: itself and the previous block) plus, for query column r = i % l,
           key column r of every block row (keys reshaped [C, l])           -> T * (2l + C)
  fixed    its own block plus the c summary keys of every block            -> T * (l + C * c)
with the pattern, causality and packed segments (`segment_ids`, 0 = padding, which attends only to
padding as in `layers.attention_bias`) as a select on those scores. The parts are concatenated
along the key axis so one f32 softmax covers the union; the parts are disjoint, so no key is
counted twice. With l = sqrt(T) the strided cost is O(T * sqrt(T)). Gradients are autodiff's.

Per layer: `model.sparse.pattern` applies to the layers of `model.sparse.layers` ('all',
'alternate' or a comma list), the others stay dense. `blocks.attention` calls `attention_fn(cfg,
layer_index)` for self-attention; `blocks.run_layers(..., indexed=True)` passes each layer's static
index, and under `layer_loop='scan'` scans groups of `layer_period(cfg)` unrolled layers (period 1
for uniform models, so the plain scan; 2 for 'alternate'; n_layers at worst, i.e. one unrolled
group) rather than `lax.switch`, whose residuals would hold both branches' buffers. Wired for the
decoder family; `validate` rejects the switches the kernels do not implement.

Einsum letters beyond DESIGN.md's: G query heads per key/value head (N = K * G), C query blocks
(block rows), E key block rows, Q position within a block (for the strided column part also the
column j % l), W keys of a block's band, U summary keys.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from models.layers import NEG_INF, dot_attention

Array = jax.Array
PATTERNS = ("dense", "local", "strided", "fixed")


def pattern_mask(
    pattern: str,
    T: int,
    *,
    causal: bool = True,
    window: int = 0,
    stride: int = 0,
    summary: int = 0,
) -> np.ndarray:
    """The reference mask [T, T] of a pattern: entry [i, j] is True iff query i attends key j.

    Args:
      pattern: one of PATTERNS (definitions in the module docstring).
      T: sequence length.
      causal: add j <= i (decoder); False gives the bidirectional variant (encoder).
      window: w of 'local'.
      stride: l of 'strided' and 'fixed' (the block length of 'fixed').
      summary: c of 'fixed'.
    """
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    d = i - j
    if pattern == "dense":
        mask = np.ones((T, T), bool)
    elif pattern == "local":
        mask = np.abs(d) < window
    elif pattern == "strided":
        mask = (np.abs(d) < stride) | (d % stride == 0)
    elif pattern == "fixed":
        mask = (j // stride == i // stride) | (j % stride >= stride - summary)
    else:
        raise ValueError(f"attention pattern {pattern!r} is unknown; choose one of {PATTERNS}")
    return mask & (d >= 0) if causal else mask


def _pad_blocks(x: Array, axis: int, b: int, fill) -> Array:
    """Pads `axis` to a multiple of b and splits it into (blocks, b)."""
    T = x.shape[axis]
    C = -(-T // b)
    pads = [(0, 0)] * x.ndim
    pads[axis] = (0, C * b - T)
    x = jnp.pad(x, pads, constant_values=fill)
    return x.reshape(*x.shape[:axis], C, b, *x.shape[axis + 1 :])


def _band(x: Array, axis: int, n_back: int, n_fwd: int, fill) -> Array:
    """x[..., C, b, ...] (blocks on `axis`) -> [..., C, (n_back + 1 + n_fwd) * b, ...]: block c
    followed by its neighbours, key w of the band being position c * b + w - n_back * b."""
    C = x.shape[axis]
    pads = [(0, 0)] * x.ndim
    pads[axis] = (n_back, n_fwd)
    xp = jnp.pad(x, pads, constant_values=fill)
    parts = [jax.lax.slice_in_dim(xp, o, o + C, axis=axis) for o in range(n_back + 1 + n_fwd)]
    return jnp.concatenate(parts, axis=axis + 1)


def _masked(logits: Array, mask: Array) -> Array:
    return jnp.where(mask, logits, jnp.asarray(NEG_INF, logits.dtype))


def sparse_attention(
    q_BTNH: Array,
    k_BSKH: Array,
    v_BSKH: Array,
    segment_ids_BT: Array,
    *,
    pattern: str,
    causal: bool = True,
    window: int = 0,
    stride: int = 0,
    summary: int = 0,
) -> Array:
    """Blockwise self-attention under a sparse pattern; equals `dot_attention` with the bias of
    `pattern_mask` & same-segment (module docstring), computing only the blocks the pattern needs.

    Args:
      q_BTNH: queries; k_BSKH, v_BSKH: keys and values of the same sequence (S == T), K heads
        shared by N / K query heads each (GQA) as in `layers.dot_attention`.
      segment_ids_BT: packed-document ids [B, T] (0 = padding).
      pattern: 'local', 'strided' or 'fixed' ('dense' goes through `dot_attention`).
      causal, window, stride, summary: as in `pattern_mask`.

    Returns:
      [B, T, N, H] in the dtype of v; logits and softmax in f32.
    """
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    G = N // K
    assert k_BSKH.shape[1] == T, "sparse patterns are for self-attention (S == T)"
    q_BTNH = q_BTNH * jnp.asarray(H**-0.5, q_BTNH.dtype)
    k_BKTH = k_BSKH.transpose(0, 2, 1, 3)
    v_BKTH = v_BSKH.transpose(0, 2, 1, 3)

    if pattern == "local":
        b = window
        n_back = -(-(window - 1) // b)
    elif pattern == "strided":
        b, n_back = stride, 1 if stride > 1 else 0
    elif pattern == "fixed":
        b, n_back = stride, 0
    else:
        raise ValueError(f"sparse pattern {pattern!r} is unknown; choose local, strided or fixed")
    n_fwd = 0 if causal else n_back
    C = -(-T // b)

    # Blocks of queries, keys, values and segments; padding gets segment -1 (a real query never
    # attends it, and the padded query rows are dropped at the end).
    # Query heads inside the block ([C, G, Q] order): the band is then one batched matmul per
    # (batch, kv head, block) with no transposes.
    q_BCQKGH = _pad_blocks(q_BTNH.reshape(B, T, K, G, H), 1, b, 0)
    q_BKCGQH = q_BCQKGH.transpose(0, 3, 1, 4, 2, 5)
    k_BKCQH = _pad_blocks(k_BKTH, 2, b, 0)
    v_BKCQH = _pad_blocks(v_BKTH, 2, b, 0)
    seg_BCQ = _pad_blocks(segment_ids_BT, 1, b, -1)
    i_CQ = np.arange(C * b).reshape(
        C, b
    )  # query positions (static: numpy, so XLA need not fold them)

    # Part 1, the band: each query block against its neighbouring key blocks.
    k_BKCWH = _band(k_BKCQH, 2, n_back, n_fwd, 0)
    v_BKCWH = _band(v_BKCQH, 2, n_back, n_fwd, 0)
    seg_BCW = _band(seg_BCQ, 1, n_back, n_fwd, -1)
    W = k_BKCWH.shape[3]
    j_CW = np.arange(C)[:, None] * b + np.arange(W)[None, :] - n_back * b
    d_CQW = i_CQ[:, :, None] - j_CW[:, None, :]
    if pattern == "local":
        in_band = np.abs(d_CQW) < window
    elif pattern == "strided":
        in_band = np.abs(d_CQW) < stride
    else:  # fixed: the own block (the band is that block alone)
        in_band = np.ones_like(d_CQW, bool)
    in_band = in_band & (j_CW[:, None, :] >= 0) & (j_CW[:, None, :] < T)
    if causal:
        in_band = in_band & (d_CQW >= 0)
    same_BCQW = seg_BCQ[:, :, :, None] == seg_BCW[:, :, None, :]
    mask_B1C1QW = (in_band[None] & same_BCQW)[:, None, :, None]
    logits = jnp.einsum(
        "BKCGQH,BKCWH->BKCGQW", q_BKCGQH, k_BKCWH, preferred_element_type=jnp.float32
    )
    parts = [_masked(logits, mask_B1C1QW)]

    # Part 2: the keys outside the band, each in a layout where it is one matmul.
    E = C
    if pattern == "strided":
        # Query column r = i % l scores key column r of every other block row (j = i +- m * l).
        logits = jnp.einsum(
            "BKCGQH,BKEQH->BKCGQE", q_BKCGQH, k_BKCQH, preferred_element_type=jnp.float32
        )
        rows_CE = np.arange(C)[:, None], np.arange(E)[None, :]
        other_CE = rows_CE[1] < rows_CE[0] if causal else rows_CE[1] != rows_CE[0]
        j_EQ = i_CQ  # key positions, laid out like the queries
        ok_CQE = other_CE[:, None, :] & (j_EQ.T < T)[None]
        same_BCQE = seg_BCQ[:, :, :, None] == seg_BCQ.transpose(0, 2, 1)[:, None, :, :]
        parts.append(_masked(logits, (ok_CQE[None] & same_BCQE)[:, None, :, None]))
    elif pattern == "fixed":
        # Every query scores the last c keys of every other block ("summary" positions).
        k_BKUH = k_BKCQH[:, :, :, b - summary :].reshape(B, K, C * summary, H)
        seg_BU = seg_BCQ[:, :, b - summary :].reshape(B, C * summary)
        j_U = (np.arange(C)[:, None] * b + np.arange(b - summary, b)[None, :]).reshape(-1)
        block_U = j_U // b
        other_CU = (
            block_U[None, :] < np.arange(C)[:, None]
            if causal
            else block_U[None, :] != np.arange(C)[:, None]
        )
        ok_CU = other_CU & (j_U < T)[None, :]
        same_BCQU = seg_BCQ[:, :, :, None] == seg_BU[:, None, None, :]
        logits = jnp.einsum(
            "BKCGQH,BKUH->BKCGQU", q_BKCGQH, k_BKUH, preferred_element_type=jnp.float32
        )
        parts.append(_masked(logits, (ok_CU[None, :, None, :] & same_BCQU)[:, None, :, None]))

    # One softmax over the union of the parts (they are disjoint).
    sizes = [p.shape[-1] for p in parts]
    probs = jax.nn.softmax(jnp.concatenate(parts, axis=-1), axis=-1).astype(v_BSKH.dtype)
    probs_parts = jnp.split(probs, np.cumsum(sizes)[:-1].tolist(), axis=-1)
    out_BKCGQH = jnp.einsum("BKCGQW,BKCWH->BKCGQH", probs_parts[0], v_BKCWH)
    if pattern == "strided":
        out_BKCGQH = out_BKCGQH + jnp.einsum("BKCGQE,BKEQH->BKCGQH", probs_parts[1], v_BKCQH)
    elif pattern == "fixed":
        v_BKUH = v_BKCQH[:, :, :, b - summary :].reshape(B, K, C * summary, H)
        out_BKCGQH = out_BKCGQH + jnp.einsum("BKCGQU,BKUH->BKCGQH", probs_parts[1], v_BKUH)
    out_BTNH = out_BKCGQH.transpose(0, 2, 4, 1, 3, 5).reshape(B, C * b, N, H)[:, :T]
    return out_BTNH.astype(v_BSKH.dtype)


# --- per-layer configuration -------------------------------------------------------------------


def _check(cfg) -> None:
    """The rules across fields (each field's type and range are declared in models/sizes.py)."""
    s = cfg.sparse
    if s.pattern not in PATTERNS:
        raise ValueError(
            f"model.sparse.pattern={s.pattern!r} is unknown; choose one of {list(PATTERNS)}"
        )
    if s.pattern == "fixed" and s.stride and not 1 <= s.summary <= s.stride:
        raise ValueError(
            f"model.sparse.summary={s.summary} must be in [1, model.sparse.stride={s.stride}] "
            "for 'fixed'"
        )


def validate(cfg) -> None:
    """One-line errors for sparse-attention fields and the switches they do not combine with."""
    _check(cfg)
    sparse_layer_set(cfg)
    if cfg.sparse.pattern == "dense":
        return
    for bad, why in [
        (cfg.get("family", "decoder") != "decoder", "is wired for family=decoder only"),
        (cfg.get("positions") == "relative", "does not take positions='relative' (a T x T bias)"),
        (cfg.get("attn_dropout", 0.0) > 0, "does not take attn_dropout"),
        (not cfg.get("attn_scale", True), "needs attn_scale=True"),
    ]:
        if bad:
            raise ValueError(f"model.sparse.pattern={cfg.sparse.pattern!r} {why}")


def sparse_layer_set(cfg) -> frozenset[int]:
    """Indices of the layers that use `cfg.sparse.pattern` (the others are dense).

    `sparse.layers` is 'all', 'alternate' (odd layers 1, 3, ...: GPT-3's alternating dense and
    sparse layers, starting dense) or a comma list of layer indices such as '0,2,5'.
    """
    L = cfg.n_layers
    spec = str(cfg.sparse.layers).strip()
    if spec == "all":
        return frozenset(range(L))
    if spec == "alternate":
        return frozenset(range(1, L, 2))
    try:
        layers = frozenset(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        layers = None
    if layers is None or any(not 0 <= i < L for i in layers):
        raise ValueError(
            f"model.sparse.layers={spec!r} is not 'all', 'alternate' or a comma list of layer "
            f"indices in [0, {L})"
        )
    return layers


def layer_pattern(cfg, layer_index: int) -> str:
    """The attention pattern of one layer."""
    _check(cfg)
    pattern = cfg.sparse.pattern
    if pattern == "dense" or layer_index not in sparse_layer_set(cfg):
        return "dense"
    return pattern


def layer_period(cfg) -> int:
    """The smallest p dividing n_layers such that layer i has the pattern of layer i % p.

    `layer_loop='scan'` scans over n_layers / p groups of p unrolled layers, so each layer's
    pattern is static inside the scan body: 1 for uniform models (the plain scan), 2 for
    'alternate', n_layers at worst (one group: the same as the Python loop).
    """
    L = cfg.n_layers
    patterns = [layer_pattern(cfg, i) for i in range(L)]
    for p in range(1, L + 1):
        if L % p == 0 and all(patterns[i] == patterns[i % p] for i in range(L)):
            return p
    return L


def uses_dense(cfg) -> bool:
    """Whether any layer is dense (and so needs the [B, 1, T, S] bias)."""
    return any(layer_pattern(cfg, i) == "dense" for i in range(cfg.n_layers))


def resolved_stride(cfg, T: int) -> int:
    """l of the strided and fixed patterns: `sparse.stride`, or ceil(sqrt(T)) when it is 0."""
    return cfg.sparse.stride or math.isqrt(T - 1) + 1


def attention_fn(cfg, layer_index: int, causal: bool = True) -> Callable:
    """The attention of one layer: `fn(q_BTNH, k_BSKH, v_BSKH, bias_B1TS, segment_ids_BT)`.

    Dense layers use `layers.dot_attention` with the precomputed bias (segments and causality
    already in it); sparse layers use `sparse_attention` with the segment ids (the bias may be
    None).
    """
    pattern = layer_pattern(cfg, layer_index)
    if pattern == "dense":
        return lambda q, k, v, bias_B1TS, segment_ids_BT: dot_attention(q, k, v, bias_B1TS)

    def fn(q_BTNH, k_BSKH, v_BSKH, bias_B1TS, segment_ids_BT):
        del bias_B1TS
        B, T = q_BTNH.shape[:2]
        if segment_ids_BT is None:
            segment_ids_BT = jnp.ones((B, T), jnp.int32)
        stride = resolved_stride(cfg, T)
        if pattern == "fixed" and not 1 <= cfg.sparse.summary <= stride:
            raise ValueError(
                f"model.sparse.summary={cfg.sparse.summary} must be in [1, {stride}] (the stride)"
            )
        return sparse_attention(
            q_BTNH,
            k_BSKH,
            v_BSKH,
            segment_ids_BT,
            pattern=pattern,
            causal=causal,
            window=cfg.sparse.window,
            stride=stride,
            summary=cfg.sparse.summary,
        )

    return fn


def keys_per_query(cfg, layer_index: int, T: int, causal: bool = True) -> int:
    """Key positions scored per query by the layer's kernel (computed, including the masked
    entries inside the blocks it computes): T for dense (the full T x T matrix), 2w for local
    (w = window, causal), 2l + ceil(T / l) for strided, l + ceil(T / l) * c for fixed."""
    pattern = layer_pattern(cfg, layer_index)
    if pattern == "dense":
        return T
    if pattern == "local":
        w = cfg.sparse.window
        n = -(-(w - 1) // w)
        return (n + 1 + (0 if causal else n)) * w
    stride = resolved_stride(cfg, T)
    C = -(-T // stride)
    if pattern == "strided":
        return (2 if causal else 3) * stride + C
    return stride + C * cfg.sparse.summary
