"""Decoder-only Transformer (GPT): pre-LN, causal, segment-aware, as pure init/apply.

Parameters are stacked along `layers` so pipeline stages can slice them and the layer loop can be a
Python loop (fastest on XLA:CPU) or `lax.scan` (fastest to compile on TPU).
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from models import layers
from models.layers import (
    ACTIVATIONS,
    attention_bias,
    constrain,
    dot_attention,
    layer_norm,
    normal,
    param,
    rotary,
)
from models.sizes import resolved_dims

_policies = jax.checkpoint_policies
# What the backward pass may keep from each layer's forward (the rest is recomputed). Named
# activations are tagged with `checkpoint_name` in `block`: 'qkv' (q, k, v after rotary),
# 'attn_out' (attention output before the o projection), 'mlp_in' (the MLP's pre-activation).
REMAT_POLICIES = {
    "none": None,  # no remat: keep everything
    "full": _policies.nothing_saveable,  # keep nothing but the layer's inputs
    "save_dots": _policies.dots_with_no_batch_dims_saveable,  # weight matmul outputs
    "save_all_dots": _policies.dots_saveable,  # + the batched attention einsums
    "save_attn": _policies.save_only_these_names("qkv", "attn_out"),  # recompute the MLP
    "save_qkv_attn_mlp": _policies.save_only_these_names("qkv", "attn_out", "mlp_in"),
}


def init(rng: jax.Array, cfg) -> dict:
    """Initialises boxed parameters (`nn.LogicallyPartitioned` leaves) for a model config."""
    L, D, N, K, H, F, V = resolved_dims(cfg)
    std = cfg.init_std
    out_std = std / math.sqrt(2 * L)  # GPT-2: residual projections scaled by depth
    ks = iter(jax.random.split(rng, 16))
    ones, zeros = jax.nn.initializers.ones, jax.nn.initializers.zeros
    params = {
        "embed": param(next(ks), (V, D), ("vocab", "embed"), normal(std)),
        "layers": {
            "ln1_scale": param(next(ks), (L, D), ("layers", "embed"), ones),
            "ln1_bias": param(next(ks), (L, D), ("layers", "embed"), zeros),
            "q": param(
                next(ks), (L, D, N, H), ("layers", "embed", "heads", "head_dim"), normal(std)
            ),
            "k": param(
                next(ks), (L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), normal(std)
            ),
            "v": param(
                next(ks), (L, D, K, H), ("layers", "embed", "kv_heads", "head_dim"), normal(std)
            ),
            "o": param(
                next(ks), (L, N, H, D), ("layers", "heads", "head_dim", "embed"), normal(out_std)
            ),
            "ln2_scale": param(next(ks), (L, D), ("layers", "embed"), ones),
            "ln2_bias": param(next(ks), (L, D), ("layers", "embed"), zeros),
            "wi": param(next(ks), (L, D, F), ("layers", "embed", "mlp"), normal(std)),
            "wo": param(next(ks), (L, F, D), ("layers", "mlp", "embed"), normal(out_std)),
        },
        "final_ln_scale": param(next(ks), (D,), ("embed",), ones),
        "final_ln_bias": param(next(ks), (D,), ("embed",), zeros),
    }
    if cfg.positions == "learned":
        params["pos_embed"] = param(next(ks), (cfg.max_len, D), (None, "embed"), normal(std))
    elif cfg.positions != "rotary":
        raise ValueError(f"model.positions={cfg.positions!r} is unknown; use 'rotary' or 'learned'")
    if not cfg.tie_embeddings:
        params["unembed"] = param(next(ks), (D, V), ("embed", "vocab"), normal(std))
    return params


def block(x_BTD, p: dict, positions_BT, bias_B1TS, cfg):
    """One pre-LN Transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""
    act = ACTIVATIONS[cfg.activation]
    dense = functools.partial(layers.dense, act_bits=cfg.get("act_bits", 0))  # QAT switch
    h_BTD = layer_norm(x_BTD, p["ln1_scale"], p["ln1_bias"], cfg.norm_eps)
    q_BTNH = dense(h_BTD, p["q"])
    k_BTKH = dense(h_BTD, p["k"])
    v_BTKH = dense(h_BTD, p["v"])
    q_BTNH = constrain(q_BTNH, ("batch", "length", "heads", "head_dim"))
    k_BTKH = constrain(k_BTKH, ("batch", "length", "kv_heads", "head_dim"))
    if cfg.positions == "rotary":
        q_BTNH = rotary(q_BTNH, positions_BT, cfg.rope_theta)
        k_BTKH = rotary(k_BTKH, positions_BT, cfg.rope_theta)
    q_BTNH, k_BTKH, v_BTKH = (checkpoint_name(a, "qkv") for a in (q_BTNH, k_BTKH, v_BTKH))
    attn_BTNH = checkpoint_name(dot_attention(q_BTNH, k_BTKH, v_BTKH, bias_B1TS), "attn_out")
    x_BTD = x_BTD + dense(attn_BTNH, p["o"], n_in=2)
    x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
    h_BTD = layer_norm(x_BTD, p["ln2_scale"], p["ln2_bias"], cfg.norm_eps)
    h_BTF = act(checkpoint_name(dense(h_BTD, p["wi"]), "mlp_in"))
    h_BTF = constrain(h_BTF, ("batch", "length", "mlp"))
    x_BTD = x_BTD + dense(h_BTF, p["wo"])
    return constrain(x_BTD, ("batch", "length", "embed"))


def apply(params: dict, batch: dict, cfg, *, rngs=None) -> jax.Array:
    """Next-token logits [B, T, V] (f32) for `batch['tokens']`.

    Args:
      params: unboxed parameters from `init`.
      batch: `tokens` [B, T] int32; optional `segment_ids` (packed documents, 0 = padding) and
        `positions` (position within each document) of the same shape.
      cfg: the model config.
      rngs: unused (no dropout in this family yet); accepted for a uniform signature.
    """
    del rngs
    tokens_BT = batch["tokens"]
    B, T = tokens_BT.shape
    segment_ids_BT = batch.get("segment_ids", jnp.ones((B, T), jnp.int32))
    positions_BT = batch.get("positions", jnp.broadcast_to(jnp.arange(T), (B, T)))
    dtype = jnp.dtype(cfg.dtype)

    x_BTD = jnp.take(params["embed"], tokens_BT, axis=0).astype(dtype)
    if cfg.positions == "learned":
        x_BTD = x_BTD + jnp.take(params["pos_embed"], positions_BT, axis=0).astype(dtype)
    x_BTD = constrain(x_BTD, ("batch", "length", "embed"))
    bias_B1TS = attention_bias(segment_ids_BT, causal=True)

    layer_fn = lambda x, p: block(x, p, positions_BT, bias_B1TS, cfg)
    if REMAT_POLICIES.get(cfg.remat, "bad") == "bad":
        raise ValueError(
            f"model.remat={cfg.remat!r} is unknown; choose one of {list(REMAT_POLICIES)}"
        )
    if cfg.remat != "none":
        layer_fn = jax.checkpoint(layer_fn, policy=REMAT_POLICIES[cfg.remat])
    if cfg.layer_loop == "scan":
        x_BTD, _ = jax.lax.scan(lambda x, p: (layer_fn(x, p), None), x_BTD, params["layers"])
    elif cfg.layer_loop == "python":
        for i in range(cfg.n_layers):
            x_BTD = layer_fn(x_BTD, jax.tree.map(lambda w, i=i: w[i], params["layers"]))
    else:
        raise ValueError(f"model.layer_loop={cfg.layer_loop!r} is unknown; use 'python' or 'scan'")

    x_BTD = layer_norm(x_BTD, params["final_ln_scale"], params["final_ln_bias"], cfg.norm_eps)
    if cfg.tie_embeddings:
        logits_BTV = jnp.einsum(
            "BTD,VD->BTV", x_BTD, params["embed"].astype(dtype), preferred_element_type=jnp.float32
        )
    else:
        logits_BTV = jnp.einsum(
            "BTD,DV->BTV",
            x_BTD,
            params["unembed"].astype(dtype),
            preferred_element_type=jnp.float32,
        )
    return constrain(logits_BTV, ("batch", "length", "vocab"))
