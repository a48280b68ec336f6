"""Incremental (KV-cached) forward passes of the decoder and of the encoder-decoder's decoder.

The cached path reuses the pieces of `models/blocks.py` (embeddings, norms, residuals, `attend`,
the MLP, relative-position bias, the output projection), so every architecture switch a family
supports applies here too; only the self-attention keys and values come from a cache instead of
being recomputed. `models/generate.py` drives it.

Layout: prompts are LEFT-padded to a common length, so every row writes its new keys at the same
cache slot (`cache['index']`) and one `dynamic_update_slice` serves the batch. Row b has `pad[b]`
padding slots in front; its tokens' positions are `slot - pad[b]`, exactly the positions the
unpadded prompt has in a full forward pass, and keys in its padding slots are masked out.

Cache (a dict pytree, stacked along `layers` like the parameters):
  k, v      [L, B, S_max, K, H] self-attention keys (after rotary) and values
  index     int32 scalar, the next slot to write
  pad       int32 [B], padding slots in front of each row
  cross_k, cross_v [L, B, S_enc, K, H] and enc_segment_ids [B, S_enc]   (encoder-decoder only)
"""

import jax
import jax.numpy as jnp

from models import blocks
from models.layers import NEG_INF, dense, rotary
from models.sizes import resolved_dims


def _check(cfg) -> None:
    pattern = cfg.sparse.pattern
    if pattern != "dense":
        raise ValueError(
            f"model.sparse.pattern={pattern!r}: KV-cache generation supports dense attention "
            "only; use sparse.pattern='dense' to sample"
        )


def _with_bias(y, p: dict, name: str):
    b = p.get(f"{name}_bias")
    return y if b is None else y + b.reshape((1,) * (y.ndim - b.ndim) + b.shape).astype(y.dtype)


def _layer(layers: dict, i: int) -> dict:
    return jax.tree.map(lambda w: w[i], layers)


def init_cache(cfg, batch_size: int, max_len: int, pad_B: jax.Array, n_layers: int = 0) -> dict:
    """An empty self-attention cache for `batch_size` rows of up to `max_len` slots.

    Args:
      cfg: the model config.
      batch_size: rows B.
      max_len: cache slots S_max (padded prompt length + tokens to generate).
      pad_B: int32 [B] left-padding slots of each row.
      n_layers: layers of the stack (0: `cfg.n_layers`).
    """
    _check(cfg)
    L, D, N, K, H, F, V = resolved_dims(cfg)
    shape = (n_layers or L, batch_size, max_len, K, H)
    dtype = jnp.dtype(cfg.dtype)
    return {
        "k": jnp.zeros(shape, dtype),
        "v": jnp.zeros(shape, dtype),
        "index": jnp.zeros((), jnp.int32),
        "pad": jnp.asarray(pad_B, jnp.int32),
    }


def _self_bias(cache: dict, positions_BT, slots_T, table, cfg):
    """[B, 1 or N, T, S_max] bias: keys in the row's real slots at or before the query's slot."""
    S = cache["k"].shape[2]
    slot_S = jnp.arange(S)
    pad_B = cache["pad"]
    allowed_BTS = (slot_S[None, None, :] >= pad_B[:, None, None]) & (
        slot_S[None, None, :] <= slots_T[None, :, None]
    )
    bias = jnp.where(allowed_BTS, 0.0, NEG_INF).astype(jnp.float32)[:, None]
    if cfg.positions == "relative":
        k_pos_BS = jnp.maximum(slot_S[None, :] - pad_B[:, None], 0)
        bias = bias + blocks.relative_bias(
            table, positions_BT, k_pos_BS, bidirectional=False, cfg=cfg
        )
    return bias


def _cached_block(x_BTD, p, k_cache, v_cache, index, bias, positions_BT, cfg, cross=None):
    """One block on T new tokens; returns (x, updated k cache, updated v cache)."""
    new = {}

    def self_attn(h_BTD):
        q_BTNH = _with_bias(dense(h_BTD, p["q"]), p, "q")
        k_BTKH = _with_bias(dense(h_BTD, p["k"]), p, "k")
        v_BTKH = _with_bias(dense(h_BTD, p["v"]), p, "v")
        if cfg.positions == "rotary":
            q_BTNH = rotary(q_BTNH, positions_BT, cfg.rope_theta)
            k_BTKH = rotary(k_BTKH, positions_BT, cfg.rope_theta)
        start = (0, index, 0, 0)
        new["k"] = jax.lax.dynamic_update_slice(k_cache, k_BTKH.astype(k_cache.dtype), start)
        new["v"] = jax.lax.dynamic_update_slice(v_cache, v_BTKH.astype(v_cache.dtype), start)
        attn_BTNH = blocks.attend(q_BTNH, new["k"], new["v"], bias, cfg)
        return _with_bias(dense(attn_BTNH, p["o"], n_in=2), p, "o")

    x_BTD = blocks.residual(x_BTD, p, "ln1", self_attn, cfg)
    if cross is not None:
        ck_BSKH, cv_BSKH, cross_bias = cross

        def cross_attn(h_BTD):
            q_BTNH = _with_bias(dense(h_BTD, p["cross_q"]), p, "cross_q")
            attn_BTNH = blocks.attend(q_BTNH, ck_BSKH, cv_BSKH, cross_bias, cfg)
            return _with_bias(dense(attn_BTNH, p["cross_o"], n_in=2), p, "cross_o")

        x_BTD = blocks.residual(x_BTD, p, "ln_cross", cross_attn, cfg)
    x_BTD = blocks.residual(x_BTD, p, "ln2", lambda h: blocks.mlp(h, p, cfg), cfg)
    return x_BTD, new["k"], new["v"]


def _run_stack(params, stack, tokens_BT, cache, cfg, *, cross=False):
    """Embeds T new tokens at slot `cache['index']`, runs the stack, returns (hidden, cache)."""
    B, T = tokens_BT.shape
    index = cache["index"]
    slots_T = index + jnp.arange(T)
    positions_BT = jnp.maximum(slots_T[None, :] - cache["pad"][:, None], 0)
    x_BTD = blocks.embed(params, tokens_BT, positions_BT, cfg)
    bias = _self_bias(cache, positions_BT, slots_T, stack.get("rel_bias"), cfg)
    ks, vs = [], []
    for i in range(cache["k"].shape[0]):
        p = _layer(stack["layers"], i)
        cross_i = None
        if cross:
            T_ = tokens_BT.shape[1]
            seg_BS = cache["enc_segment_ids"]
            cross_bias = jnp.where(seg_BS[:, None, None, :] != 0, 0.0, NEG_INF)
            cross_bias = jnp.broadcast_to(cross_bias, (B, 1, T_, seg_BS.shape[1]))
            cross_i = (cache["cross_k"][i], cache["cross_v"][i], cross_bias.astype(jnp.float32))
        x_BTD, k, v = _cached_block(
            x_BTD, p, cache["k"][i], cache["v"][i], index, bias, positions_BT, cfg, cross_i
        )
        ks.append(k)
        vs.append(v)
    if cfg.norm_position == "pre":
        x_BTD = blocks.norm(x_BTD, stack, "final_ln", cfg)
    cache = dict(cache, k=jnp.stack(ks), v=jnp.stack(vs), index=index + T)
    return x_BTD, cache


def decoder_step(params: dict, tokens_BT: jax.Array, cache: dict, cfg) -> tuple[jax.Array, dict]:
    """Logits [B, T, V] of T new tokens of a decoder-only model, and the updated cache.

    A prompt is one call with its whole (left-padded) length; each generated token is one call
    with T = 1. The logits equal those of `decoder.apply` on the unpadded sequences.
    """
    x_BTD, cache = _run_stack(params, params, tokens_BT, cache, cfg)
    return blocks.unembed(x_BTD, params, cfg), cache


def encdec_cache(params: dict, batch: dict, cfg, max_len: int) -> dict:
    """Encodes `batch['inputs']` once and returns a decoder cache holding the cross keys/values.

    Args:
      params: encoder-decoder parameters.
      batch: `inputs` [B, S_enc] and `inputs_segment_ids` (0 on padding; any side may be padded,
        the encoder masks by segment).
      cfg: the model config.
      max_len: decoder slots (tokens to generate + 1 for the start token).
    """
    from models import encdec

    enc_BSD = encdec.encode(params, batch, cfg)
    B = enc_BSD.shape[0]
    seg_BS = batch.get("inputs_segment_ids", jnp.ones(batch["inputs"].shape, jnp.int32))
    layers = params["decoder"]["layers"]
    n_dec = cfg.n_decoder_layers or cfg.n_layers
    cache = init_cache(cfg, B, max_len, jnp.zeros((B,), jnp.int32), n_dec)
    ck, cv = [], []
    for i in range(n_dec):
        p = _layer(layers, i)
        ck.append(_with_bias(dense(enc_BSD, p["cross_k"]), p, "cross_k"))
        cv.append(_with_bias(dense(enc_BSD, p["cross_v"]), p, "cross_v"))
    return dict(cache, cross_k=jnp.stack(ck), cross_v=jnp.stack(cv), enc_segment_ids=seg_BS)


def encdec_step(params: dict, tokens_BT: jax.Array, cache: dict, cfg) -> tuple[jax.Array, dict]:
    """Decoder logits [B, T, V] of T new decoder-input tokens, and the updated cache."""
    y_BTD, cache = _run_stack(params, params["decoder"], tokens_BT, cache, cfg, cross=True)
    return blocks.unembed(y_BTD, params, cfg), cache
