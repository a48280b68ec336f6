"""Encoder-only Transformer (BERT / RoBERTa): bidirectional attention within packed segments.

`apply` returns a dict of the configured heads, computed from one pass:
  logits        [B, T, V] masked-LM logits (BERT head: dense + activation + norm, then the tied
                embedding or `unembed`, plus a vocabulary bias `mlm_out_bias`)
  nsp_logits    [B, 2] next-sentence prediction (`model.nsp_head`), from the pooled first token
  class_logits  [B, C] sequence classification (`model.num_classes` > 0), same pooling
  hidden        [B, T, D] final hidden states
Unused outputs cost nothing under jit. Padding (segment 0) never attends to or from real tokens.
The BERT configuration is `norm_position='post'`, `embed_norm=True`, learned positions, biases on,
`type_vocab_size=2`, exact GELU (see experiments/bert.py).
"""

import jax
import jax.numpy as jnp

from models import blocks, mup
from models.layers import ACTIVATIONS, dense, normal, param
from models.sizes import resolved_dims


def init(rng: jax.Array, cfg) -> dict:
    """Initialises boxed parameters (`nn.LogicallyPartitioned` leaves) for a model config."""
    blocks.validate(cfg)
    L, D, N, K, H, F, V = resolved_dims(cfg)
    std, zeros = cfg.init_std, jax.nn.initializers.zeros
    kg = blocks.KeyGen(rng)
    params = blocks.init_embeddings(kg, cfg)
    params["layers"] = blocks.init_layers(kg, L, cfg)
    if cfg.norm_position == "pre":
        params |= blocks.init_norm(kg, "final_ln", (), cfg)
    if cfg.positions == "relative":
        params["rel_bias"] = param(
            kg("rel_bias"), (cfg.rel_buckets, N), (None, "heads"), normal(std)
        )
    params["mlm_dense"] = param(kg("mlm_dense"), (D, D), ("embed", None), normal(std))
    params["mlm_dense_bias"] = param(kg("mlm_dense_bias"), (D,), ("embed",), zeros)
    params |= blocks.init_norm(kg, "mlm_ln", (), cfg)
    params["mlm_out_bias"] = param(kg("mlm_out_bias"), (V,), ("vocab",), zeros)
    if not cfg.tie_embeddings:
        params["unembed"] = param(kg("unembed"), (D, V), ("embed", "vocab"), normal(std))
    if cfg.nsp_head or cfg.num_classes:
        params["pooler"] = param(kg("pooler"), (D, D), ("embed", None), normal(std))
        params["pooler_bias"] = param(kg("pooler_bias"), (D,), ("embed",), zeros)
    if cfg.nsp_head:
        params["nsp"] = param(kg("nsp"), (D, 2), ("embed", None), normal(std))
        params["nsp_bias"] = param(kg("nsp_bias"), (2,), (None,), zeros)
    if cfg.num_classes:
        C = cfg.num_classes
        params["classifier"] = param(kg("classifier"), (D, C), ("embed", None), normal(std))
        params["classifier_bias"] = param(kg("classifier_bias"), (C,), (None,), zeros)
    return mup.scale_init(params, cfg)


def encode(params: dict, batch: dict, cfg, *, rngs=None) -> jax.Array:
    """Final hidden states [B, T, D] with bidirectional attention within segments."""
    x_BTD, segment_ids_BT, positions_BT, layers_rng = blocks.embed_batch(params, batch, cfg, rngs)
    bias, kernel_segments_BT = None, None
    if blocks.attention_impl(cfg) != "xla":  # a fused kernel: the segment ids, no T x T bias
        kernel_segments_BT = segment_ids_BT if "segment_ids" in batch else None
    else:
        bias = blocks.mask_bias(segment_ids_BT, segment_ids_BT, causal=False)
    if cfg.positions == "relative":
        bias = bias + blocks.relative_bias(
            params["rel_bias"], positions_BT, positions_BT, bidirectional=True, cfg=cfg
        )

    def layer_fn(x, p, rng):
        return blocks.block(
            x,
            p,
            bias,
            cfg,
            positions_BT=positions_BT,
            rng=rng,
            causal=False,
            segment_ids_BT=kernel_segments_BT,
        )

    x_BTD = blocks.run_layers(x_BTD, params["layers"], layer_fn, cfg, cfg.n_layers, layers_rng)
    if cfg.norm_position == "pre":
        x_BTD = blocks.norm(x_BTD, params, "final_ln", cfg)
    return x_BTD


def _bias(x, b):
    return x + b.reshape((1,) * (x.ndim - 1) + b.shape).astype(x.dtype)


def apply(params: dict, batch: dict, cfg, *, rngs=None) -> dict:
    """The configured heads (see the module docstring) for `batch`.

    Args:
      params: unboxed parameters from `init`.
      batch: `tokens` [B, T]; optional `segment_ids` (0 = padding), `positions` and
        `token_type_ids` (segment A/B) of the same shape.
      cfg: the model config.
      rngs: a key for dropout (None: no dropout).
    """
    x_BTD = encode(params, batch, cfg, rngs=rngs)
    act = ACTIVATIONS.get(cfg.activation, ACTIVATIONS["gelu_exact"])  # gated: plain GELU head
    h_BTD = act(_bias(dense(x_BTD, params["mlm_dense"]), params["mlm_dense_bias"]))
    h_BTD = blocks.norm(h_BTD, params, "mlm_ln", cfg)
    logits_BTV = blocks.unembed(h_BTD, params, cfg)
    out = {"logits": _bias(logits_BTV, params["mlm_out_bias"]), "hidden": x_BTD}
    if cfg.nsp_head or cfg.num_classes:
        pooled_BD = jnp.tanh(_bias(dense(x_BTD[:, 0], params["pooler"]), params["pooler_bias"]))
        f32 = pooled_BD.astype(jnp.float32)
        if cfg.nsp_head:
            out["nsp_logits"] = _bias(f32 @ params["nsp"], params["nsp_bias"])
        if cfg.num_classes:
            out["class_logits"] = _bias(f32 @ params["classifier"], params["classifier_bias"])
    return out
