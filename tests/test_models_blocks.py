"""Architecture switches (models/blocks.py) against independent numpy references."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import blocks, decoder, encoder
from models.counting import count_params
from models.layers import dot_attention
from models.sizes import default_model_config


def _cfg(**kw):
    cfg = default_model_config("tiny")
    cfg.update(n_layers=2, d_model=32, n_heads=4, d_ff=64, vocab_size=64, max_len=32)
    cfg.update(kw)
    return cfg


def test_rms_norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)
    scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
    ref = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * scale  # no mean, no bias
    np.testing.assert_allclose(blocks.rms_norm(x, scale, 1e-6), ref, rtol=1e-5)


def test_sinusoidal_table_values():
    table = np.asarray(blocks.sinusoidal(jnp.array([[0, 1, 5]]), 4))[0]
    # D = 4: frequencies 1 and 10000^(-1/2) = 0.01; sines then cosines.
    np.testing.assert_allclose(table[0], [0, 0, 1, 1], atol=1e-7)
    np.testing.assert_allclose(
        table[1], [math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)], rtol=1e-6
    )
    np.testing.assert_allclose(table[2, 1], math.sin(0.05), rtol=1e-5)


def test_rotary_tables_match_a_per_position_rotation():
    """Precomputed tables (shared by all layers) give rotary's pair rotation, exactly as inline."""
    from models.layers import rotary, rotary_tables

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3, 8)).astype(np.float32)  # B, T, N, H
    pos = np.array([[0, 1, 2, 3, 4], [7, 3, 0, 1, 9]], np.int32)
    theta = 100.0
    ref = np.empty_like(x)  # pair (i, i + H/2) rotated by the angle pos * theta^(-2i/H)
    for i in range(4):
        a = pos[..., None] * theta ** (-2 * i / 8)
        x1, x2 = x[..., i], x[..., i + 4]
        ref[..., i] = x1 * np.cos(a) - x2 * np.sin(a)
        ref[..., i + 4] = x2 * np.cos(a) + x1 * np.sin(a)
    tables = rotary_tables(jnp.asarray(pos), 8, theta)
    assert tables["cos"].shape == (2, 5, 8)
    shared = rotary(jnp.asarray(x), None, tables=tables)
    np.testing.assert_allclose(shared, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(shared, rotary(jnp.asarray(x), jnp.asarray(pos), theta))


def test_relative_buckets_hand_worked():
    # rel = key - query. Bidirectional, 32 buckets, max distance 128: 16 per direction, 8 exact.
    rel = jnp.array([0, -1, 1, -7, -8, -20, 20, -200, 200])
    got = blocks.relative_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128)
    # -20: 8 + floor(log(20/8) / log(128/8) * 8) = 8 + floor(2.64) = 10; +20 the same + 16;
    # -200 saturates at 15, +200 at 31.
    assert got.tolist() == [0, 1, 17, 7, 8, 10, 26, 15, 31]
    # Causal: 32 buckets, 16 exact; future keys (rel > 0) -> 0;
    # -20: 16 + floor(log(20/16) / log(128/16) * 16) = 16 + floor(1.72) = 17.
    got = blocks.relative_bucket(
        jnp.array([0, 3, -3, -15, -16, -20, -1000]), bidirectional=False, num_buckets=32
    )
    assert got.tolist() == [0, 0, 3, 15, 16, 17, 31]


# --- a numpy reference of a whole stack, written from the papers' formulas ---------------------


def _np_norm(x, p, name, cfg):
    scale = p[f"{name}_scale"]
    if cfg.norm_type == "rmsnorm":
        return x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.norm_eps) * scale
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + cfg.norm_eps) * scale + p.get(f"{name}_bias", 0.0)


def _np_bucket(rel, bidirectional, num_buckets, max_distance):
    out, n = 0, -rel
    if bidirectional:
        num_buckets //= 2
        out += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    exact = num_buckets // 2
    if n < exact:
        return out + n
    large = exact + int(
        math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact)
    )
    return out + min(large, num_buckets - 1)


def _act(name, x):
    gelu_tanh = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    exact = 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
    silu = x / (1 + np.exp(-x))
    return {"gelu": gelu_tanh, "gelu_exact": exact, "relu": np.maximum(x, 0), "silu": silu}[name]


def _np_hidden(params, tokens, seg, cfg, causal, types=None):
    """Hidden states [B, T, D] of a decoder (causal) or encoder; positions restart per segment."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    B, T = tokens.shape
    D, N = cfg.d_model, cfg.n_heads
    K, H = cfg.n_kv_heads or N, D // N
    pos = np.zeros_like(tokens)
    for b in range(B):
        for t in range(1, T):
            pos[b, t] = pos[b, t - 1] + 1 if seg[b, t] == seg[b, t - 1] else 0
    x = p["embed"][tokens]
    if cfg.positions == "learned":
        x = x + p["pos_embed"][pos]
    if cfg.positions == "sinusoidal":
        i = np.arange(D // 2)
        ang = pos[..., None] / 10000 ** (2 * i / D)
        x = x + np.concatenate([np.sin(ang), np.cos(ang)], -1)
    if cfg.type_vocab_size:
        x = x + p["type_embed"][types]
    if cfg.embed_norm:
        x = _np_norm(x, p, "emb_ln", cfg)
    allowed = seg[:, :, None] == seg[:, None, :]
    if causal:
        allowed &= np.tril(np.ones((T, T), bool))[None]
    bias = np.where(allowed, 0.0, -np.inf)[:, None]  # [B, 1, T, S]
    if cfg.positions == "relative":
        bk = np.vectorize(_np_bucket)(
            pos[:, None, :] - pos[:, :, None], not causal, cfg.rel_buckets, cfg.rel_max_distance
        )
        bias = bias + p["rel_bias"][bk].transpose(0, 3, 1, 2)
    for layer in range(cfg.n_layers):
        lp = {k: v[layer] for k, v in p["layers"].items()}

        def attn(h, lp=lp):
            q = np.einsum("btd,dnh->btnh", h, lp["q"]) + lp.get("q_bias", 0)
            k = np.einsum("btd,dkh->btkh", h, lp["k"]) + lp.get("k_bias", 0)
            v = np.einsum("btd,dkh->btkh", h, lp["v"]) + lp.get("v_bias", 0)
            k, v = np.repeat(k, N // K, 2), np.repeat(v, N // K, 2)
            logits = np.einsum("btnh,bsnh->bnts", q, k) * (H**-0.5 if cfg.attn_scale else 1.0)
            logits = logits + bias
            w = np.exp(logits - logits.max(-1, keepdims=True))
            w /= w.sum(-1, keepdims=True)
            o = np.einsum("bnts,bsnh->btnh", w, v)
            return np.einsum("btnh,nhd->btd", o, lp["o"]) + lp.get("o_bias", 0)

        def mlp(h, lp=lp):
            if cfg.activation in ("swiglu", "geglu"):
                gate = _act("silu" if cfg.activation == "swiglu" else "gelu", h @ lp["wi_0"])
                a = gate * (h @ lp["wi_1"])
            else:
                a = _act(cfg.activation, h @ lp["wi"] + lp.get("wi_bias", 0))
            return a @ lp["wo"] + lp.get("wo_bias", 0)

        for ln, fn in [("ln1", attn), ("ln2", mlp)]:
            if cfg.norm_position == "pre":
                x = x + fn(_np_norm(x, lp, ln, cfg))
            else:
                x = _np_norm(x + fn(x), lp, ln, cfg)
    if cfg.norm_position == "pre":
        x = _np_norm(x, p, "final_ln", cfg)
    return x, pos


SWITCHES = {
    "bert_like": dict(
        norm_position="post",
        attn_bias=True,
        mlp_bias=True,
        positions="learned",
        activation="relu",
        embed_norm=True,
        type_vocab_size=2,
        norm_eps=1e-12,
        tie_embeddings=False,
    ),
    "t5_like": dict(
        norm_type="rmsnorm",
        positions="relative",
        activation="swiglu",
        attn_scale=False,
        n_kv_heads=2,
        rel_buckets=8,
        rel_max_distance=16,
    ),
    "sinusoidal_geglu_mqa": dict(
        positions="sinusoidal", activation="geglu", n_kv_heads=1, norm_bias=False
    ),
    "none_gelu_exact": dict(positions="none", activation="gelu_exact", attn_bias=True),
}


@pytest.mark.parametrize("name", sorted(SWITCHES))
@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_stack_matches_numpy_reference(name, family):
    cfg = _cfg(family=family, **SWITCHES[name])
    model = decoder if family == "decoder" else encoder
    params = nn.unbox(model.init(jax.random.key(1), cfg))
    # Non-zero biases and scales, so that a missing term shows.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: a + 0.1 * rng.normal(size=a.shape).astype(np.float32), params)
    tokens = rng.integers(0, 64, (2, 10)).astype(np.int32)
    seg = np.array([[1] * 6 + [2] * 4, [1] * 8 + [0] * 2], np.int32)
    types = (np.arange(10)[None] >= 3).astype(np.int32).repeat(2, 0)
    ref, pos = _np_hidden(params, tokens, seg, cfg, causal=family == "decoder", types=types)
    batch = {"tokens": tokens, "segment_ids": seg, "positions": pos, "token_type_ids": types}
    fn = decoder.hidden if family == "decoder" else encoder.encode
    got = fn(params, batch, cfg)
    real = seg > 0  # padding rows attend among themselves; their values do not matter
    np.testing.assert_allclose(np.asarray(got)[real], ref[real], rtol=2e-4, atol=2e-4)
    # The parameter count is the closed form of models/counting.py.
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), cfg)))
    assert count_params(cfg)["total"] == sum(x.size for x in jax.tree.leaves(shapes))


def test_dropout_is_active_only_with_rngs():
    cfg = _cfg(embed_dropout=0.1, attn_dropout=0.1, resid_dropout=0.1)
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    batch = {"tokens": np.arange(16, dtype=np.int32).reshape(2, 8)}
    plain = decoder.apply(params, batch, _cfg())
    np.testing.assert_allclose(decoder.apply(params, batch, cfg), plain, rtol=1e-6)
    a = decoder.apply(params, batch, cfg, rngs=jax.random.key(1))
    b = decoder.apply(params, batch, cfg, rngs=jax.random.key(1))
    c = decoder.apply(params, batch, cfg, rngs=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a - plain)).max() > 1e-3 and np.abs(np.asarray(a - c)).max() > 1e-3


def test_dropout_rates_keep_the_expected_fraction():
    x = jnp.ones((100_000,))
    y = np.asarray(blocks.dropout(x, 0.3, jax.random.key(0)))
    assert abs((y == 0).mean() - 0.3) < 0.01 and abs(y.mean() - 1.0) < 0.02


def test_plain_attention_path_equals_fast_kernel():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 6, 4, 8)).astype(np.float32)
    k = rng.normal(size=(2, 6, 2, 8)).astype(np.float32)
    v = rng.normal(size=(2, 6, 2, 8)).astype(np.float32)
    seg = jnp.array([[1, 1, 1, 2, 2, 0], [1] * 6])
    bias = blocks.mask_bias(seg, seg, causal=True)
    fast = blocks.attend(q, k, v, bias, _cfg())
    per_head = jnp.tile(bias, (1, 4, 1, 1))  # [B, N, T, S] takes the plain path
    np.testing.assert_allclose(blocks.attend(q, k, v, per_head, _cfg()), fast, atol=1e-5)


def test_prefix_mask_is_bidirectional_only_inside_the_prefix():
    seg = jnp.ones((1, 5), jnp.int32)
    prefix = jnp.array([[1, 1, 1, 0, 0]])
    allowed = np.asarray(blocks.mask_bias(seg, seg, causal=True, prefix_BT=prefix))[0, 0] == 0
    expected = np.tril(np.ones((5, 5), bool))
    expected[:3, :3] = True
    np.testing.assert_array_equal(allowed, expected)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_causal_blocks_are_exact_under_a_packed_causal_mask(kv_heads):
    """Skipping the keys after each query block changes nothing, values or gradients, with
    uneven blocks (23 queries), packed documents, padding and grouped kv heads."""
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.normal(size=(2, 23, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 23, kv_heads, 8)), jnp.float32) for _ in range(2))
    seg = jnp.array([[1] * 9 + [2] * 10 + [0] * 4, [1] * 23])
    bias = blocks.mask_bias(seg, seg, causal=True)
    g = jnp.asarray(rng.normal(size=(2, 23, 4, 8)), jnp.float32)

    @functools.partial(jax.jit, static_argnums=0)
    def run(n):
        f = lambda q, k, v: (dot_attention(q, k, v, bias, causal_blocks=n) * g).sum()  # noqa: E731
        return dot_attention(q, k, v, bias, causal_blocks=n), jax.grad(f, (0, 1, 2))(q, k, v)

    want, want_grads = run(1)
    for n in (2, 3, 5):
        got, grads = run(n)
        np.testing.assert_allclose(got, want, atol=2e-6)
        for a, b in zip(grads, want_grads, strict=True):
            np.testing.assert_allclose(a, b, atol=2e-5)


def test_a_prefix_lm_batch_attends_ahead_inside_its_prefix_with_causal_blocks():
    """A bidirectional prefix is not a causal mask: the decoder turns the key skipping off, so
    a token early in the prefix still reads the prefix's later tokens."""
    params = nn.unbox(decoder.init(jax.random.key(0), _cfg()))
    tokens = np.arange(32, dtype=np.int32).reshape(2, 16) % 64
    prefix = (np.arange(16)[None] < 12).astype(np.int32).repeat(2, 0)  # spans all 4 blocks
    batch = {"tokens": tokens, "prefix_mask": prefix}
    got = decoder.apply(params, batch, _cfg(causal_blocks=4))
    np.testing.assert_allclose(got, decoder.apply(params, batch, _cfg(causal_blocks=1)), atol=1e-5)
    causal = decoder.apply(params, {"tokens": tokens}, _cfg(causal_blocks=4))
    assert np.abs(np.asarray(got - causal))[:, 0].max() > 1e-3  # the prefix is seen ahead


def test_bad_switch_names_fail_with_the_field():
    for field, value in [("norm_type", "batchnorm"), ("activation", "tanh"), ("positions", "x")]:
        with pytest.raises(ValueError, match=f"model.{field}"):
            decoder.init(jax.random.key(0), _cfg(**{field: value}))
