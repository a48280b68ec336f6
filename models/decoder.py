"""Decoder-only Transformer (GPT): causal, segment-aware, as pure init/apply.

Built from `models/blocks.py`, so every architecture switch of `models/sizes.py` applies; the
defaults are a pre-LN GPT with rotary positions and tied embeddings. A `prefix_mask` in the batch
(prefix LM) makes attention bidirectional within the marked prefix of each document.

Parameters are stacked along `layers` so pipeline stages can slice them and the layer loop can be a
Python loop (fastest on XLA:CPU) or `lax.scan` (fastest to compile on TPU).
"""

import jax
import jax.numpy as jnp

from models import blocks, mup
from models.blocks import REMAT_POLICIES  # noqa: F401  (re-exported: configs name these)
from models.layers import normal, param, rotary_tables
from models.sizes import resolved_dims
from models.sparse_attention import uses_dense


def init(rng: jax.Array, cfg) -> dict:
    """Initialises boxed parameters (`nn.LogicallyPartitioned` leaves) for a model config."""
    blocks.validate(cfg)
    L, D, N, K, H, F, V = resolved_dims(cfg)
    kg = blocks.KeyGen(rng)
    params = blocks.init_embeddings(kg, cfg)
    params["layers"] = blocks.init_layers(kg, L, cfg)
    if cfg.norm_position == "pre":
        params |= blocks.init_norm(kg, "final_ln", (), cfg)
    if cfg.positions == "relative":
        params["rel_bias"] = param(
            kg("rel_bias"), (cfg.rel_buckets, N), (None, "heads"), normal(cfg.init_std)
        )
    if not cfg.tie_embeddings:
        params["unembed"] = param(kg("unembed"), (D, V), ("embed", "vocab"), normal(cfg.init_std))
    return mup.scale_init(params, cfg)


def hidden(params: dict, batch: dict, cfg, *, rngs=None, layer_stack=None) -> jax.Array:
    """Final hidden states [B, T, D] (after the final norm) for `batch['tokens']`."""
    x_BTD, segment_ids_BT, positions_BT, layers_rng = blocks.embed_batch(params, batch, cfg, rngs)
    B = x_BTD.shape[0]
    if "prefix_mask" in batch and cfg.sparse.pattern != "dense":
        raise ValueError("model.sparse.pattern: sparse patterns do not take a prefix_mask")
    kernel = blocks.attention_impl(cfg) != "xla"
    if "prefix_mask" in batch and kernel:
        raise ValueError(
            f"model.attention_impl={blocks.attention_impl(cfg)!r} takes no prefix_mask; use 'xla'"
        )
    # A model whose layers are all sparse never builds the T x T bias (its cost stays below T^2),
    # nor does a fused kernel, which takes causality and the segment ids instead.
    causal = "prefix_mask" not in batch
    bias = None
    if uses_dense(cfg) and not kernel:
        bias = blocks.mask_bias(
            segment_ids_BT, segment_ids_BT, causal=True, prefix_BT=batch.get("prefix_mask")
        )
    if cfg.positions == "relative":
        bidirectional = "prefix_mask" in batch  # the prefix looks ahead; masked keys are unused
        bias = bias + blocks.relative_bias(
            params["rel_bias"], positions_BT, positions_BT, bidirectional=bidirectional, cfg=cfg
        )

    def layer_fn(x, p, rng, i, side):
        return blocks.block(
            x,
            p,
            side["bias"],
            cfg,
            positions_BT=side["positions"],
            rng=rng,
            layer_index=i,
            segment_ids_BT=side.get("segment_ids"),
            rope=side.get("rope"),
            causal=causal,  # a bidirectional prefix is not (fused kernels reject it above)
        )

    # Per-row inputs of every layer, each [B, ...], so a pipeline can split them by microbatch.
    side = {
        "bias": None if bias is None else jnp.broadcast_to(bias, (B, *bias.shape[1:])),
        "positions": positions_BT,
        "segment_ids": segment_ids_BT,
    }
    if kernel and "segment_ids" not in batch:
        del side["segment_ids"]  # one document per row: the kernel skips segment masking
    if cfg.positions == "rotary":  # once for all layers (models/layers.rotary_tables)
        side["rope"] = rotary_tables(positions_BT, resolved_dims(cfg)[4], cfg.rope_theta)
    x_BTD = blocks.run_layers(
        x_BTD,
        params["layers"],
        layer_fn,
        cfg,
        cfg.n_layers,
        layers_rng,
        indexed=True,
        side=side,
        layer_stack=layer_stack,
    )
    if cfg.norm_position == "pre":
        x_BTD = blocks.norm(x_BTD, params, "final_ln", cfg)
    return x_BTD


def apply(params: dict, batch: dict, cfg, *, rngs=None, layer_stack=None) -> jax.Array:
    """Next-token logits [B, T, V] (f32) for `batch['tokens']`.

    Args:
      params: unboxed parameters from `init`.
      batch: `tokens` [B, T] int32; optional `segment_ids` (packed documents, 0 = padding) and
        `positions` (position within each document) of the same shape; optional `prefix_mask`
        (1 on each document's bidirectional prefix) and `token_type_ids`.
      cfg: the model config.
      rngs: a key for dropout (None: no dropout, as in evaluation).
      layer_stack: runs the stacked blocks instead of the layer loop (`blocks.run_layers`), e.g.
        as a pipeline over stages (`parallel.pipeline.make_layer_stack`).
    """
    x_BTD = hidden(params, batch, cfg, rngs=rngs, layer_stack=layer_stack)
    return blocks.unembed(x_BTD, params, cfg)
