"""Encoder-decoder Transformer (T5): a bidirectional encoder, a causal decoder with cross-attention.

Batch keys (int32 [B, T_in] and [B, T_out]):
  inputs, inputs_segment_ids, inputs_positions      encoder side (segment 0 = padding)
  targets, targets_segment_ids, targets_positions   decoder side; target segment k belongs to
                                                    input segment k of the same row (packing)
  decoder_inputs (optional)                         else `targets` shifted right within each
                                                    segment, starting from id 0 (T5's start id)
`apply` returns decoder logits [B, T_out, V] in f32. Embeddings are shared by both stacks; with
`positions='relative'` each stack has its own bias table (`encoder/rel_bias`, `decoder/rel_bias`,
shared across that stack's layers, as in T5). The T5 configurations are in experiments/t5.py.
"""

import jax
import jax.numpy as jnp

from models import blocks, mup
from models.layers import normal, param
from models.sizes import resolved_dims


def init(rng: jax.Array, cfg) -> dict:
    """Initialises boxed parameters (`nn.LogicallyPartitioned` leaves) for a model config."""
    blocks.validate(cfg)
    L, D, N, K, H, F, V = resolved_dims(cfg)
    kg = blocks.KeyGen(rng)
    params = blocks.init_embeddings(kg, cfg)
    for side, n_layers, cross in [
        ("encoder", L, False),
        ("decoder", cfg.n_decoder_layers or L, True),
    ]:
        skg = kg.child(side)
        stack = {"layers": blocks.init_layers(skg, n_layers, cfg, cross=cross)}
        if cfg.norm_position == "pre":
            stack |= blocks.init_norm(skg, "final_ln", (), cfg)
        if cfg.positions == "relative":
            stack["rel_bias"] = param(
                skg("rel_bias"), (cfg.rel_buckets, N), (None, "heads"), normal(cfg.init_std)
            )
        params[side] = stack
    if not cfg.tie_embeddings:
        params["unembed"] = param(kg("unembed"), (D, V), ("embed", "vocab"), normal(cfg.init_std))
    return mup.scale_init(params, cfg)


def _defaults(batch: dict, name: str):
    tokens_BT = batch[name]
    B, T = tokens_BT.shape
    seg_BT = batch.get(f"{name}_segment_ids", jnp.ones((B, T), jnp.int32))
    pos_BT = batch.get(f"{name}_positions", jnp.broadcast_to(jnp.arange(T), (B, T)))
    return tokens_BT, seg_BT, pos_BT


def shift_right(targets_BT: jax.Array, segment_ids_BT: jax.Array, start_id: int = 0) -> jax.Array:
    """Decoder inputs: each token's predecessor within its segment, `start_id` at segment starts."""
    prev_BT = jnp.pad(targets_BT[:, :-1], ((0, 0), (1, 0)), constant_values=start_id)
    prev_seg_BT = jnp.pad(segment_ids_BT[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
    return jnp.where(prev_seg_BT == segment_ids_BT, prev_BT, start_id)


def _stack(
    x_BTD,
    stack,
    bias,
    cfg,
    n_layers,
    rng,
    positions_BT,
    enc_BSD=None,
    cross_bias=None,
    layer_stack=None,
    *,
    causal,
    segments,
):
    """The stack's layers; `segments` holds a fused kernel's per-row segment ids
    ('segment_ids', and 'enc_segment_ids' for cross-attention; empty for unpacked rows or 'xla')."""

    def layer_fn(x, p, key, side):
        return blocks.block(
            x,
            p,
            side.get("bias"),
            cfg,
            positions_BT=side["positions"],
            enc_BSD=side.get("enc"),
            cross_bias=side.get("cross_bias"),
            rng=key,
            causal=causal,
            segment_ids_BT=side.get("segment_ids"),
            enc_segment_ids_BS=side.get("enc_segment_ids"),
        )

    B = x_BTD.shape[0]
    side = {"positions": positions_BT, **segments}
    if bias is not None:
        side["bias"] = jnp.broadcast_to(bias, (B, *bias.shape[1:]))
    if enc_BSD is not None:
        side["enc"] = enc_BSD
    if cross_bias is not None:
        side["cross_bias"] = jnp.broadcast_to(cross_bias, (B, *cross_bias.shape[1:]))
    x_BTD = blocks.run_layers(
        x_BTD, stack["layers"], layer_fn, cfg, n_layers, rng, side=side, layer_stack=layer_stack
    )
    if cfg.norm_position == "pre":
        x_BTD = blocks.norm(x_BTD, stack, "final_ln", cfg)
    return x_BTD


def _kernel_segments(batch: dict, cfg) -> bool:
    """Whether a fused kernel must mask segments: 'xla' masks with its biases, and rows with no
    segment ids on either side are one document each."""
    packed = "inputs_segment_ids" in batch or "targets_segment_ids" in batch
    return blocks.attention_impl(cfg) != "xla" and packed


def encode(params: dict, batch: dict, cfg, *, rngs=None, layer_stack=None) -> jax.Array:
    """Encoder hidden states [B, S, D] of `batch['inputs']`."""
    tokens_BS, seg_BS, pos_BS = _defaults(batch, "inputs")
    emb_rng, rng = (None, None) if rngs is None else jax.random.split(rngs)
    x_BSD = blocks.embed(params, tokens_BS, pos_BS, cfg, rng=emb_rng)
    bias = None
    if blocks.attention_impl(cfg) == "xla":  # a fused kernel takes the segment ids instead
        bias = blocks.mask_bias(seg_BS, seg_BS, causal=False)
    if cfg.positions == "relative":
        table = params["encoder"]["rel_bias"]
        bias = bias + blocks.relative_bias(table, pos_BS, pos_BS, bidirectional=True, cfg=cfg)
    segments = {"segment_ids": seg_BS} if _kernel_segments(batch, cfg) else {}
    return _stack(
        x_BSD,
        params["encoder"],
        bias,
        cfg,
        cfg.n_layers,
        rng,
        pos_BS,
        layer_stack=layer_stack,
        causal=False,
        segments=segments,
    )


def decode(
    params: dict, batch: dict, enc_BSD: jax.Array, cfg, *, rngs=None, layer_stack=None
) -> jax.Array:
    """Decoder logits [B, T, V] given encoder states."""
    targets_BT, seg_BT, pos_BT = _defaults(batch, "targets")
    _, enc_seg_BS, _ = _defaults(batch, "inputs")
    dec_in_BT = batch.get("decoder_inputs")
    if dec_in_BT is None:
        dec_in_BT = shift_right(targets_BT, seg_BT)
    emb_rng, rng = (None, None) if rngs is None else jax.random.split(rngs)
    y_BTD = blocks.embed(params, dec_in_BT, pos_BT, cfg, rng=emb_rng)
    bias = cross_bias = None
    if blocks.attention_impl(cfg) == "xla":  # a fused kernel takes the segment ids instead
        bias = blocks.mask_bias(seg_BT, seg_BT, causal=True)
        cross_bias = blocks.mask_bias(seg_BT, enc_seg_BS, causal=False)
    if cfg.positions == "relative":
        table = params["decoder"]["rel_bias"]
        bias = bias + blocks.relative_bias(table, pos_BT, pos_BT, bidirectional=False, cfg=cfg)
    segments = {}
    if _kernel_segments(batch, cfg):
        segments = {"segment_ids": seg_BT, "enc_segment_ids": enc_seg_BS}
    n_dec = cfg.n_decoder_layers or cfg.n_layers
    y_BTD = _stack(
        y_BTD,
        params["decoder"],
        bias,
        cfg,
        n_dec,
        rng,
        pos_BT,
        enc_BSD,
        cross_bias,
        layer_stack,
        causal=True,
        segments=segments,
    )
    return blocks.unembed(y_BTD, params, cfg)


def apply(params: dict, batch: dict, cfg, *, rngs=None, layer_stack=None) -> jax.Array:
    """Decoder logits [B, T_out, V] (f32) for the encoder-decoder batch (module docstring).

    Args:
      params: unboxed parameters from `init`.
      batch: the keys listed in the module docstring.
      cfg: the model config.
      rngs: a key for dropout (None: no dropout).
      layer_stack: runs each stack of layers instead of the layer loop, e.g. as a pipeline
        over stages (`parallel.pipeline.make_layer_stack`).
    """
    enc_rng, dec_rng = (None, None) if rngs is None else jax.random.split(rngs)
    enc_BSD = encode(params, batch, cfg, rngs=enc_rng, layer_stack=layer_stack)
    return decode(params, batch, enc_BSD, cfg, rngs=dec_rng, layer_stack=layer_stack)
