"""Transformer blocks shared by the decoder, encoder and encoder-decoder families.

Every architecture switch of `models/sizes.py` (norm placement and type, positions, biases, MLP
activation, attention scaling, dropout) is read here, so the three families differ only in how
they wire these pure functions together. Parameter names are the same in every family (`q`, `k`,
`v`, `o`, `wi` or `wi_0`/`wi_1`, `wo`, `ln1_scale`, ...; cross-attention adds a `cross_` prefix),
because muP and the Hugging Face converters key on them.

Dropout is active only when `rngs` (a key) is passed and the rate is positive; evaluation passes
None. The fast custom-VJP attention of `models/layers.py` is used whenever it applies (a
head-shared mask bias, 1/sqrt(H) scaling, no attention dropout); otherwise a plain autodiff path.
`model.attention_impl` other than 'xla' sends every attention through one fused kernel instead
(`attend_kernel`, kernels/attention.py), which takes the mask as a causal flag, segment ids and a
local window: the families then build no [B, 1, T, S] bias.
"""

import functools
import math
import zlib

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from kernels import attention as kernel_attention
from models import mup, sparse_attention
from models.layers import (
    ACTIVATIONS,
    NEG_INF,
    constrain,
    dense,
    dot_attention,
    layer_norm,
    normal,
    param,
    rotary,
    rotary_tables,
)

Array = jax.Array

# Gated MLPs (Shazeer 2020): act(x W_0) * (x W_1), with separate `wi_0` (gated) and `wi_1`.
GATED = {
    "swiglu": jax.nn.silu,
    "geglu": lambda x: jax.nn.gelu(x, approximate=True),  # T5 v1.1's gated-gelu ("gelu_new")
    "geglu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "reglu": jax.nn.relu,
}
NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("rotary", "learned", "sinusoidal", "relative", "none")
ATTENTION_IMPLS = ("xla", *kernel_attention.IMPLS)

_policies = jax.checkpoint_policies
# What the backward pass may keep from each layer's forward (the rest is recomputed). Named
# activations are tagged with `checkpoint_name`: 'qkv' (q, k, v after rotary), 'attn_out'
# (attention output before the o projection), 'mlp_in' (the MLP's pre-activation).
REMAT_POLICIES = {
    "none": None,  # no remat: keep everything
    "full": _policies.nothing_saveable,  # keep nothing but the layer's inputs
    "save_dots": _policies.dots_with_no_batch_dims_saveable,  # weight matmul outputs
    "save_all_dots": _policies.dots_saveable,  # + the batched attention einsums
    "save_attn": _policies.save_only_these_names("qkv", "attn_out"),  # recompute the MLP
    "save_qkv_attn_mlp": _policies.save_only_these_names("qkv", "attn_out", "mlp_in"),
}

# The order in which the original decoder drew its parameter keys: kept so that the default
# decoder initialises bit-for-bit as before (existing runs and tests reproduce).
_LEGACY_ORDER = (
    "embed",
    "ln1_scale",
    "ln1_bias",
    "q",
    "k",
    "v",
    "o",
    "ln2_scale",
    "ln2_bias",
    "wi",
    "wo",
    "final_ln_scale",
    "final_ln_bias",
    "pos_embed",
    "unembed",
)


class KeyGen:
    """Per-parameter init keys: legacy names in their historical order, others hashed by path."""

    def __init__(self, rng: Array, prefix: str = ""):
        self._rng, self._prefix = rng, prefix
        self._legacy = jax.random.split(rng, 16)

    def __call__(self, name: str) -> Array:
        if not self._prefix and name in _LEGACY_ORDER:
            return self._legacy[_LEGACY_ORDER.index(name)]
        return jax.random.fold_in(self._rng, zlib.crc32(f"{self._prefix}/{name}".encode()))

    def child(self, prefix: str) -> "KeyGen":
        return KeyGen(self._rng, f"{self._prefix}/{prefix}")


def validate(cfg) -> None:
    """One-line errors for unknown switch values (called by every family's `init`)."""
    if cfg.norm_type not in NORMS:
        raise ValueError(f"model.norm_type={cfg.norm_type!r} is unknown; choose one of {NORMS}")
    if cfg.norm_position not in ("pre", "post"):
        raise ValueError(f"model.norm_position={cfg.norm_position!r} is unknown; use pre or post")
    if cfg.positions not in POSITIONS:
        raise ValueError(f"model.positions={cfg.positions!r} is unknown; choose one of {POSITIONS}")
    if cfg.activation not in ACTIVATIONS and cfg.activation not in GATED:
        known = sorted([*ACTIVATIONS, *GATED])
        raise ValueError(f"model.activation={cfg.activation!r} is unknown; choose one of {known}")
    for name in ("embed_dropout", "attn_dropout", "resid_dropout"):
        if not 0.0 <= cfg[name] < 1.0:
            raise ValueError(f"model.{name}={cfg[name]} must be in [0, 1)")
    sparse_attention.validate(cfg)
    validate_attention_impl(cfg)


def attention_impl(cfg) -> str:
    """`model.attention_impl`; a config written before the field existed (a run's config.json)
    means 'xla'."""
    return cfg.get("attention_impl", "xla")


def validate_attention_impl(cfg) -> None:
    """Rejects the switches a fused kernel cannot compute (kernels/attention.py's table)."""
    impl = attention_impl(cfg)
    if impl not in ATTENTION_IMPLS:
        raise ValueError(
            f"model.attention_impl={impl!r} is unknown; choose one of {list(ATTENTION_IMPLS)}"
        )
    if impl == "xla":
        return
    pattern = cfg.sparse.pattern
    H = cfg.d_head or cfg.d_model // cfg.n_heads
    for bad, why in [
        (cfg.positions == "relative", "takes no per-head bias (positions='relative')"),
        (cfg.attn_dropout > 0, "has no attention dropout (attn_dropout > 0)"),
        (cfg.attn_logits_dtype != "float32", "computes logits in f32 (attn_logits_dtype)"),
        (pattern in ("strided", "fixed"), f"has no {pattern!r} mask (sparse.pattern)"),
        (
            pattern == "local" and impl not in kernel_attention.LOCAL_WINDOW,
            "has no sliding-window mask (sparse.pattern='local')",
        ),
        (
            impl in kernel_attention.HALF_ONLY and cfg.dtype != "bfloat16",
            "takes bf16 inputs only (model.dtype='bfloat16')",
        ),
        (
            impl == "cudnn" and (H % 8 or H > 256),
            f"needs a head size <= 256, divisible by 8 (not {H})",
        ),
    ]:
        if bad:
            raise ValueError(f"model.attention_impl={impl!r} {why}")


# --- norms -------------------------------------------------------------------------------------


def rms_norm(x_BTD: Array, scale_D: Array, eps: float = 1e-6) -> Array:
    """RMSNorm (T5's LayerNorm): no mean subtraction, no bias; computed in f32."""
    x = x_BTD.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + eps)
    return (y * scale_D.reshape((1,) * (x.ndim - 1) + scale_D.shape)).astype(x_BTD.dtype)


def init_norm(kg: KeyGen, name: str, lead: tuple, cfg) -> dict:
    """`{name}_scale` (and `{name}_bias` for a LayerNorm with `norm_bias`) of shape lead + [D]."""
    axes = ("layers",) * len(lead) + ("embed",)
    shape = (*lead, cfg.d_model)
    p = {f"{name}_scale": param(kg(f"{name}_scale"), shape, axes, jax.nn.initializers.ones)}
    if cfg.norm_type == "layernorm" and cfg.norm_bias:
        p[f"{name}_bias"] = param(kg(f"{name}_bias"), shape, axes, jax.nn.initializers.zeros)
    return p


def norm(x_BTD: Array, p: dict, name: str, cfg) -> Array:
    if cfg.norm_type == "rmsnorm":
        return rms_norm(x_BTD, p[f"{name}_scale"], cfg.norm_eps)
    return layer_norm(x_BTD, p[f"{name}_scale"], p.get(f"{name}_bias"), cfg.norm_eps)


# --- positions ---------------------------------------------------------------------------------


def sinusoidal(positions_BT: Array, d_model: int, max_timescale: float = 10000.0) -> Array:
    """Fixed sinusoidal embeddings [B, T, D] (Vaswani et al. 2017): the first D/2 channels are
    sin(p / max_timescale^(2i/D)), the last D/2 the cosines of the same angles."""
    inv_freq = max_timescale ** (-jnp.arange(0, d_model // 2, dtype=jnp.float32) * 2 / d_model)
    angle_BTd = positions_BT[..., None].astype(jnp.float32) * inv_freq[None, None]
    return jnp.concatenate([jnp.sin(angle_BTd), jnp.cos(angle_BTd)], axis=-1)


def relative_bucket(
    rel_TS: Array, *, bidirectional: bool, num_buckets: int = 32, max_distance: int = 128
) -> Array:
    """T5's relative-position bucket of `rel = key_position - query_position`.

    Half the buckets (per direction when bidirectional) hold exact distances 0 .. n/2 - 1; the
    rest grow logarithmically up to `max_distance`, beyond which all distances share the last
    bucket. A causal (unidirectional) bias sends every future key to bucket 0 (they are masked).
    """
    n_TS = -rel_TS
    bucket_TS = jnp.zeros_like(rel_TS)
    if bidirectional:
        num_buckets //= 2
        bucket_TS = bucket_TS + jnp.where(n_TS < 0, num_buckets, 0)
        n_TS = jnp.abs(n_TS)
    else:
        n_TS = jnp.maximum(n_TS, 0)
    max_exact = num_buckets // 2
    ratio = jnp.log(jnp.maximum(n_TS, 1).astype(jnp.float32) / max_exact)
    large_TS = max_exact + (
        ratio / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(rel_TS.dtype)
    large_TS = jnp.minimum(large_TS, num_buckets - 1)
    return bucket_TS + jnp.where(n_TS < max_exact, n_TS, large_TS)


def relative_bias(
    table_RN: Array, q_pos_BT: Array, k_pos_BS: Array, *, bidirectional: bool, cfg
) -> Array:
    """Per-head additive bias [B, N, T, S] from a learned bucket table (shared by all layers)."""
    rel_BTS = k_pos_BS[:, None, :] - q_pos_BT[:, :, None]
    bucket_BTS = relative_bucket(
        rel_BTS,
        bidirectional=bidirectional,
        num_buckets=cfg.rel_buckets,
        max_distance=cfg.rel_max_distance,
    )
    bias_BTSN = jnp.take(table_RN.astype(jnp.float32), bucket_BTS, axis=0)
    return bias_BTSN.transpose(0, 3, 1, 2)


# --- attention ---------------------------------------------------------------------------------


def dropout(x: Array, rate: float, rng: Array | None) -> Array:
    if rng is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def attend(q_BTNH, k_BSKH, v_BSKH, bias, cfg, rng=None, causal: bool = False) -> Array:
    """Softmax attention with an additive bias [B, 1 or N, T, S] and grouped kv heads.

    Takes the fast kernel of `models/layers.py` when it applies; otherwise a plain autodiff
    version (per-head bias such as T5's, no 1/sqrt(H) scaling, or attention-prob dropout).
    `causal`: the bias masks every key after its query, so the kernel may skip those keys
    (`model.causal_blocks`).
    """
    B, T, N, H = q_BTNH.shape
    K = k_BSKH.shape[2]
    G = N // K
    drop = rng is not None and cfg.attn_dropout > 0
    scale = mup.attention_scale(cfg, H)  # None: 1/sqrt(H); muP: 1/H (models/mup.py)
    logits_dtype = jnp.dtype(cfg.attn_logits_dtype)
    if bias.shape[1] == 1 and cfg.attn_scale and not drop:
        return dot_attention(
            q_BTNH,
            k_BSKH,
            v_BSKH,
            bias,
            scale=scale,
            logits_dtype=logits_dtype,
            causal_blocks=cfg.get("causal_blocks", 1) if causal else 1,  # older configs: 1
        )
    if cfg.attn_scale:
        q_BTNH = q_BTNH * jnp.asarray(H**-0.5 if scale is None else scale, q_BTNH.dtype)
    q_BTKGH = q_BTNH.reshape(B, T, K, G, H)  # query head n = k * G + g
    logits_BKGTS = jnp.einsum(
        "BTKGH,BSKH->BKGTS", q_BTKGH, k_BSKH, preferred_element_type=logits_dtype
    )
    heads = bias.shape[1]  # 1 (shared mask) or N (per-head bias)
    bias_BKGTS = bias.reshape(bias.shape[0], K if heads > 1 else 1, -1, *bias.shape[2:])
    probs_BKGTS = jax.nn.softmax(logits_BKGTS + bias_BKGTS.astype(logits_dtype), axis=-1)
    if drop:
        probs_BKGTS = dropout(probs_BKGTS, cfg.attn_dropout, rng)
    out_BTKGH = jnp.einsum("BKGTS,BSKH->BTKGH", probs_BKGTS.astype(v_BSKH.dtype), v_BSKH)
    return out_BTKGH.reshape(B, T, N, H)


def attend_kernel(
    q_BTNH,
    k_BSKH,
    v_BSKH,
    cfg,
    *,
    causal: bool,
    segment_ids_BT=None,
    kv_segment_ids_BS=None,
    window: int = 0,
) -> Array:
    """Attention by the fused kernel `cfg.attention_impl` (kernels/attention.py), the mask given
    as data: `causal`, packed-document ids (None: one document per row; the kv ids default to
    the query's) and a local `window` (0: none). The logit scale (1/sqrt(H), muP's, or 1 without
    `attn_scale`) is the same as `attend`'s."""
    scale = mup.attention_scale(cfg, q_BTNH.shape[-1]) if cfg.attn_scale else 1.0
    return kernel_attention.attention(
        q_BTNH,
        k_BSKH,
        v_BSKH,
        impl=attention_impl(cfg),
        causal=causal,
        segment_ids_BT=segment_ids_BT,
        kv_segment_ids_BS=kv_segment_ids_BS,
        window=window,
        scale=scale,
    )


def mask_bias(
    q_seg_BT: Array,
    k_seg_BS: Array,
    *,
    causal: bool,
    prefix_BT: Array | None = None,
) -> Array:
    """Additive f32 bias [B, 1, T, S]: 0 where query and key share a segment (and, if causal, the
    key is not in the future, or both lie in the bidirectional prefix), NEG_INF elsewhere.

    Padding (segment 0) attends only to padding, so no row is fully masked.
    """
    allowed_BTS = q_seg_BT[:, :, None] == k_seg_BS[:, None, :]
    if causal:
        T, S = q_seg_BT.shape[1], k_seg_BS.shape[1]
        past_BTS = (jnp.arange(T)[:, None] >= jnp.arange(S)[None, :])[None]
        if prefix_BT is not None:
            p = prefix_BT.astype(bool)
            past_BTS = past_BTS | (p[:, :, None] & p[:, None, :])
        allowed_BTS = allowed_BTS & past_BTS
    return jnp.where(allowed_BTS, 0.0, NEG_INF).astype(jnp.float32)[:, None]


# --- parameters of one stack of layers ---------------------------------------------------------


def init_attention(kg: KeyGen, L: int, cfg, prefix: str = "") -> dict:
    """q, k, v, o (and their biases) stacked over L layers; `prefix` is '' or 'cross_'."""
    D, N, K, H = cfg.d_model, cfg.n_heads, cfg.n_kv_heads or cfg.n_heads, _head_dim(cfg)
    std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
    zeros = jax.nn.initializers.zeros
    shapes = {
        "q": ((L, D, N, H), ("layers", "embed", "heads", "head_dim"), normal(std)),
        "k": ((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), normal(std)),
        "v": ((L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), normal(std)),
        "o": ((L, N, H, D), ("layers", "heads", "head_dim", "embed"), normal(out_std)),
    }
    if cfg.attn_bias:
        shapes |= {
            "q_bias": ((L, N, H), ("layers", "heads", "head_dim"), zeros),
            "k_bias": ((L, K, H), ("layers", "kv_heads", "head_dim"), zeros),
            "v_bias": ((L, K, H), ("layers", "kv_heads", "head_dim"), zeros),
            "o_bias": ((L, D), ("layers", "embed"), zeros),
        }
    return {prefix + n: param(kg(prefix + n), s, a, i) for n, (s, a, i) in shapes.items()}


def init_mlp(kg: KeyGen, L: int, cfg) -> dict:
    D, F = cfg.d_model, cfg.d_ff
    std, out_std = cfg.init_std, cfg.init_std / math.sqrt(2 * cfg.n_layers)
    zeros = jax.nn.initializers.zeros
    ins = ("wi_0", "wi_1") if cfg.activation in GATED else ("wi",)
    p = {n: param(kg(n), (L, D, F), ("layers", "embed", "mlp"), normal(std)) for n in ins}
    p["wo"] = param(kg("wo"), (L, F, D), ("layers", "mlp", "embed"), normal(out_std))
    if cfg.mlp_bias:
        for n in ins:
            p[f"{n}_bias"] = param(kg(f"{n}_bias"), (L, F), ("layers", "mlp"), zeros)
        p["wo_bias"] = param(kg("wo_bias"), (L, D), ("layers", "embed"), zeros)
    return p


def init_layers(kg: KeyGen, L: int, cfg, *, cross: bool = False) -> dict:
    """Parameters of L stacked blocks: self-attention, optional cross-attention, MLP."""
    p = init_norm(kg, "ln1", (L,), cfg)
    p |= init_attention(kg, L, cfg)
    if cross:
        p |= init_norm(kg, "ln_cross", (L,), cfg)
        p |= init_attention(kg, L, cfg, prefix="cross_")
    p |= init_norm(kg, "ln2", (L,), cfg)
    p |= init_mlp(kg, L, cfg)
    return p


def _head_dim(cfg) -> int:
    return cfg.d_head or cfg.d_model // cfg.n_heads


# --- the block ---------------------------------------------------------------------------------


def _biased(y: Array, p: dict, name: str) -> Array:
    b = p.get(f"{name}_bias")
    return y if b is None else y + b.reshape((1,) * (y.ndim - b.ndim) + b.shape).astype(y.dtype)


def attention(
    h_BTD,
    p,
    bias,
    cfg,
    *,
    kv_BSD=None,
    positions_BT=None,
    prefix="",
    rng=None,
    layer_index=0,
    segment_ids_BT=None,
    rope=None,
    causal=True,
    kv_segment_ids_BS=None,
):
    """Multi-head attention sublayer (self-attention when `kv_BSD` is None) -> [B, T, D].

    A self-attention layer whose `sparse_attention.layer_pattern` is not dense runs that pattern
    blockwise (causal; with `segment_ids_BT` instead of the bias). `rope`: rotary tables of
    `positions_BT` computed once for all layers (`layers.rotary_tables`); None: computed here.
    With a fused kernel (`model.attention_impl`) `bias` is unused and the mask is `causal`,
    `segment_ids_BT` and, for cross-attention, `kv_segment_ids_BS` (None: unpacked rows)."""
    self_attention = kv_BSD is None or kv_BSD is h_BTD
    kv_BSD = h_BTD if kv_BSD is None else kv_BSD
    q_BTNH = _biased(dense(h_BTD, p[prefix + "q"]), p, prefix + "q")
    k_BSKH = _biased(dense(kv_BSD, p[prefix + "k"]), p, prefix + "k")
    v_BSKH = _biased(dense(kv_BSD, p[prefix + "v"]), p, prefix + "v")
    q_BTNH = constrain(q_BTNH, ("batch", "length", "heads", "head_dim"))
    k_BSKH = constrain(k_BSKH, ("batch", "length", "kv_heads", "head_dim"))
    if cfg.positions == "rotary" and positions_BT is not None:
        if rope is None:
            rope = rotary_tables(positions_BT, q_BTNH.shape[-1], cfg.rope_theta)
        q_BTNH = rotary(q_BTNH, positions_BT, tables=rope)
        k_BSKH = rotary(k_BSKH, positions_BT, tables=rope)
    q_BTNH, k_BSKH, v_BSKH = (checkpoint_name(a, "qkv") for a in (q_BTNH, k_BSKH, v_BSKH))
    pattern = sparse_attention.layer_pattern(cfg, layer_index) if self_attention else "dense"
    if attention_impl(cfg) != "xla":
        attn_BTNH = attend_kernel(
            q_BTNH,
            k_BSKH,
            v_BSKH,
            cfg,
            causal=causal,
            segment_ids_BT=segment_ids_BT,
            kv_segment_ids_BS=segment_ids_BT if self_attention else kv_segment_ids_BS,
            window=cfg.sparse.window if pattern == "local" else 0,
        )
    elif pattern != "dense":
        attn_fn = sparse_attention.attention_fn(cfg, layer_index)
        attn_BTNH = attn_fn(q_BTNH, k_BSKH, v_BSKH, None, segment_ids_BT)
    else:
        attn_BTNH = attend(q_BTNH, k_BSKH, v_BSKH, bias, cfg, rng, causal and self_attention)
    attn_BTNH = checkpoint_name(attn_BTNH, "attn_out")
    return _biased(dense(attn_BTNH, p[prefix + "o"], n_in=2), p, prefix + "o")


def mlp(h_BTD, p, cfg) -> Array:
    """Position-wise MLP, plain `act(x wi) wo` or gated `(act(x wi_0) * x wi_1) wo`."""
    if cfg.activation in GATED:
        gate_BTF = _biased(dense(h_BTD, p["wi_0"]), p, "wi_0")
        lin_BTF = _biased(dense(h_BTD, p["wi_1"]), p, "wi_1")
        h_BTF = GATED[cfg.activation](checkpoint_name(gate_BTF, "mlp_in")) * lin_BTF
    else:
        pre_BTF = checkpoint_name(_biased(dense(h_BTD, p["wi"]), p, "wi"), "mlp_in")
        h_BTF = ACTIVATIONS[cfg.activation](pre_BTF)
    h_BTF = constrain(h_BTF, ("batch", "length", "mlp"))
    return _biased(dense(h_BTF, p["wo"]), p, "wo")


def residual(x_BTD, p, ln: str, fn, cfg, rng=None) -> Array:
    """x + dropout(fn(LN(x))) (pre-LN) or LN(x + dropout(fn(x))) (post-LN, BERT)."""
    if cfg.norm_position == "pre":
        x_BTD = x_BTD + dropout(fn(norm(x_BTD, p, ln, cfg)), cfg.resid_dropout, rng)
    else:
        x_BTD = norm(x_BTD + dropout(fn(x_BTD), cfg.resid_dropout, rng), p, ln, cfg)
    return constrain(x_BTD, ("batch", "length", "embed"))


def block(
    x_BTD,
    p,
    self_bias,
    cfg,
    *,
    positions_BT=None,
    enc_BSD=None,
    cross_bias=None,
    rng=None,
    layer_index=0,
    segment_ids_BT=None,
    rope=None,
    causal=True,
    enc_segment_ids_BS=None,
):
    """One Transformer block: self-attention, cross-attention (if `enc_BSD`), MLP.

    `layer_index` selects the self-attention pattern (`sparse_attention.layer_pattern`); `rope`
    optionally holds the self-attention's precomputed rotary tables (`layers.rotary_tables`).
    `causal`, `segment_ids_BT` and `enc_segment_ids_BS` are the masks of a fused kernel
    (`model.attention_impl`), which ignores the biases."""
    keys = [None] * 5 if rng is None else list(jax.random.split(rng, 5))
    attn = lambda h: attention(
        h,
        p,
        self_bias,
        cfg,
        positions_BT=positions_BT,
        rng=keys[0],
        layer_index=layer_index,
        segment_ids_BT=segment_ids_BT,
        rope=rope,
        causal=causal,
    )
    x_BTD = residual(x_BTD, p, "ln1", attn, cfg, keys[1])
    if enc_BSD is not None:
        cross = lambda h: attention(
            h,
            p,
            cross_bias,
            cfg,
            kv_BSD=enc_BSD,
            prefix="cross_",
            rng=keys[2],
            segment_ids_BT=segment_ids_BT,
            causal=False,
            kv_segment_ids_BS=enc_segment_ids_BS,
        )
        x_BTD = residual(x_BTD, p, "ln_cross", cross, cfg, keys[3])
    return residual(x_BTD, p, "ln2", lambda h: mlp(h, p, cfg), cfg, keys[4])


# --- embeddings and the layer stack ------------------------------------------------------------


def init_embeddings(kg: KeyGen, cfg) -> dict:
    """Token table, plus position / token-type tables and embedding norm as configured."""
    D, std = cfg.d_model, cfg.init_std
    p = {"embed": param(kg("embed"), (cfg.vocab_size, D), ("vocab", "embed"), normal(std))}
    if cfg.positions == "learned":
        p["pos_embed"] = param(kg("pos_embed"), (cfg.max_len, D), (None, "embed"), normal(std))
    if cfg.type_vocab_size:
        p["type_embed"] = param(
            kg("type_embed"), (cfg.type_vocab_size, D), (None, "embed"), normal(std)
        )
    if cfg.embed_norm:
        p |= init_norm(kg, "emb_ln", (), cfg)
    return p


def embed(params, tokens_BT, positions_BT, cfg, *, token_types_BT=None, rng=None) -> Array:
    """Token (+ position, + token-type) embeddings, embedding norm and dropout -> [B, T, D]."""
    dtype = jnp.dtype(cfg.dtype)
    x_BTD = jnp.take(params["embed"], tokens_BT, axis=0).astype(dtype)
    if cfg.positions == "learned":
        x_BTD = x_BTD + jnp.take(params["pos_embed"], positions_BT, axis=0).astype(dtype)
    elif cfg.positions == "sinusoidal":
        x_BTD = x_BTD + sinusoidal(positions_BT, cfg.d_model).astype(dtype)
    if cfg.type_vocab_size:
        types_BT = jnp.zeros_like(tokens_BT) if token_types_BT is None else token_types_BT
        x_BTD = x_BTD + jnp.take(params["type_embed"], types_BT, axis=0).astype(dtype)
    if cfg.embed_norm:
        x_BTD = norm(x_BTD, params, "emb_ln", cfg)
    x_BTD = dropout(x_BTD, cfg.embed_dropout, rng)
    return constrain(x_BTD, ("batch", "length", "embed"))


def embed_batch(params: dict, batch: dict, cfg, rngs=None):
    """Embeds `batch['tokens']` [B, T] of a single-stack model (decoder or encoder).

    Returns:
      (x_BTD, segment_ids_BT, positions_BT, layers_rng): the embeddings, the batch's segment ids
      and positions (one document and 0..T-1 when absent), and the dropout key for the layers.
    """
    tokens_BT = batch["tokens"]
    B, T = tokens_BT.shape
    segment_ids_BT = batch.get("segment_ids", jnp.ones((B, T), jnp.int32))
    positions_BT = batch.get("positions", jnp.broadcast_to(jnp.arange(T), (B, T)))
    emb_rng, layers_rng = (None, None) if rngs is None else jax.random.split(rngs)
    x_BTD = embed(
        params,
        tokens_BT,
        positions_BT,
        cfg,
        token_types_BT=batch.get("token_type_ids"),
        rng=emb_rng,
    )
    return x_BTD, segment_ids_BT, positions_BT, layers_rng


def run_layers(
    x_BTD,
    layers: dict,
    layer_fn,
    cfg,
    n_layers: int,
    rng=None,
    *,
    indexed=False,
    side=None,
    layer_stack=None,
):
    """Applies `layer_fn(x, p, rng)` over stacked `layers` (Python loop or `lax.scan`), with the
    remat policy `cfg.remat` around each layer.

    With `indexed`, `layer_fn(x, p, rng, layer_index)` gets each layer's static index (per-layer
    attention patterns); under scan the layers are then scanned in groups of
    `sparse_attention.layer_period(cfg)` unrolled layers (1 when all layers are alike).

    With `side` (a dict of per-row [B, ...] arrays the layers read: masks, positions, encoder
    states), `layer_fn` takes it as its last argument; a `layer_stack(fn, stacked, x, side) -> x`
    then runs the stack instead of the loop (`parallel.pipeline.make_layer_stack`: a pipeline
    over stages, which hands each stage its microbatch's rows of `side`).
    """
    if cfg.remat not in REMAT_POLICIES:
        raise ValueError(
            f"model.remat={cfg.remat!r} is unknown; choose one of {list(REMAT_POLICIES)}"
        )
    if layer_stack is not None:
        if indexed and sparse_attention.layer_period(cfg) != 1:
            raise ValueError(
                "layers with different attention patterns cannot be pipelined (one program "
                "per stage); set parallel.mesh.stage=1 or make all layers alike"
            )
        keys = None if rng is None else jax.random.split(rng, n_layers)
        stacked = {"p": layers} if keys is None else {"p": layers, "key": keys}

        def stage_fn(x, pk, s):
            index = (0,) if indexed else ()  # all layers alike: the index selects nothing
            return layer_fn(x, pk["p"], pk.get("key"), *index, s)

        if cfg.remat != "none":
            stage_fn = jax.checkpoint(stage_fn, policy=REMAT_POLICIES[cfg.remat])
        return layer_stack(stage_fn, stacked, x_BTD, side)
    if side is not None:
        layer_fn = functools.partial(_with_side, layer_fn, side)

    def fn_at(i: int):
        fn = (lambda x, p, k: layer_fn(x, p, k, i)) if indexed else layer_fn
        return jax.checkpoint(fn, policy=REMAT_POLICIES[cfg.remat]) if cfg.remat != "none" else fn

    keys = None if rng is None else jax.random.split(rng, n_layers)
    if cfg.layer_loop == "scan":
        period = sparse_attention.layer_period(cfg) if indexed else 1
        fns = [fn_at(i) for i in range(period)]

        def group_fn(x, pk):
            if period == 1:
                return fns[0](x, *pk), None
            p, k = pk
            for i in range(period):
                p_i = jax.tree.map(lambda w, i=i: w[i], p)
                x = fns[i](x, p_i, None if k is None else k[i])
            return x, None

        xs = (layers, keys)
        if period > 1:
            xs = jax.tree.map(lambda w: w.reshape(n_layers // period, period, *w.shape[1:]), xs)
        x_BTD, _ = jax.lax.scan(group_fn, x_BTD, xs)
    elif cfg.layer_loop == "python":
        for i in range(n_layers):
            p = jax.tree.map(lambda w, i=i: w[i], layers)
            x_BTD = fn_at(i)(x_BTD, p, None if keys is None else keys[i])
    else:
        raise ValueError(f"model.layer_loop={cfg.layer_loop!r} is unknown; use 'python' or 'scan'")
    return x_BTD


def _with_side(layer_fn, side, *args):
    return layer_fn(*args, side)


def unembed(x_BTD, params, cfg) -> Array:
    """Output logits [B, T, V] in `cfg.loss_dtype` (f32 by default) from the tied embedding or the
    `unembed` matrix, times muP's output multiplier when `cfg.mup.enabled`."""
    dtype = x_BTD.dtype
    if cfg.tie_embeddings:
        if cfg.tied_output_scale:  # T5 v1.0 rescales before the tied projection
            x_BTD = x_BTD * jnp.asarray(cfg.d_model**-0.5, dtype)
        logits_BTV = jnp.einsum(
            "BTD,VD->BTV",
            x_BTD,
            params["embed"].astype(dtype),
            preferred_element_type=cfg.loss_dtype,
        )
    else:
        logits_BTV = jnp.einsum(
            "BTD,DV->BTV",
            x_BTD,
            params["unembed"].astype(dtype),
            preferred_element_type=cfg.loss_dtype,
        )
    if mup.enabled(cfg):
        logits_BTV = logits_BTV * jnp.asarray(mup.output_mult(cfg), logits_BTV.dtype)
    return constrain(logits_BTV, ("batch", "length", "vocab"))
