"""Decoder model: causality, packing isolation, layer-loop and GQA equivalences, counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoder
from models.counting import count_params, flops_per_token
from models.layers import attention_bias, dot_attention
from models.sizes import SIZES, default_model_config


def _cfg(**kw):
    cfg = default_model_config("tiny")
    cfg.n_layers = 2
    cfg.update(kw)
    return cfg


def _params(cfg, seed=0):
    return nn.unbox(decoder.init(jax.random.key(seed), cfg))


def _tokens(B=2, T=16, seed=0):
    return np.random.default_rng(seed).integers(0, 384, (B, T)).astype(np.int32)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_logits_do_not_depend_on_future_tokens(positions):
    cfg = _cfg(positions=positions)
    params = _params(cfg)
    tokens = _tokens()
    base = decoder.apply(params, {"tokens": tokens}, cfg)
    for t in [0, 5, 14]:
        changed = tokens.copy()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 384
        out = decoder.apply(params, {"tokens": changed}, cfg)
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
        assert np.abs(np.asarray(out[:, t + 1 :] - base[:, t + 1 :])).max() > 1e-3


def test_packed_documents_are_isolated():
    """A document's logits equal those it gets alone, whatever it is packed with."""
    cfg = _cfg()
    params = _params(cfg)
    doc_a, doc_b = _tokens(1, 7, seed=1)[0], _tokens(1, 9, seed=2)[0]
    packed = {
        "tokens": np.concatenate([doc_a, doc_b])[None],
        "segment_ids": np.array([[1] * 7 + [2] * 9], np.int32),
        "positions": np.array([list(range(7)) + list(range(9))], np.int32),
    }
    out = decoder.apply(params, packed, cfg)
    alone_a = decoder.apply(params, {"tokens": doc_a[None]}, cfg)
    alone_b = decoder.apply(params, {"tokens": doc_b[None]}, cfg)
    np.testing.assert_allclose(out[0, :7], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 7:], alone_b[0], atol=1e-5)
    # Changing document a leaves document b untouched.
    other = dict(packed, tokens=packed["tokens"].copy())
    other["tokens"][0, :7] = (other["tokens"][0, :7] + 3) % 384
    np.testing.assert_allclose(decoder.apply(params, other, cfg)[0, 7:], out[0, 7:], atol=1e-5)


def test_scan_equals_python_loop_and_remat():
    cfg = _cfg()
    params = _params(cfg)
    batch = {"tokens": _tokens()}
    ref = decoder.apply(params, batch, cfg)

    def loss(p, c):
        return decoder.apply(p, batch, c).std()

    ref_grads = jax.grad(loss)(params, cfg)
    remats = [dict(remat=name) for name in decoder.REMAT_POLICIES if name != "none"]
    for kw in [dict(layer_loop="scan"), *remats, dict(layer_loop="scan", remat="save_attn")]:
        c = _cfg(**kw)
        np.testing.assert_allclose(decoder.apply(params, batch, c), ref, rtol=1e-5, atol=1e-5)
        grads = jax.grad(loss)(params, c)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_grouped_query_attention_equals_repeated_heads():
    rng = np.random.default_rng(0)
    B, T, N, K, H = 2, 8, 4, 2, 16
    q = rng.normal(size=(B, T, N, H)).astype(np.float32)
    k = rng.normal(size=(B, T, K, H)).astype(np.float32)
    v = rng.normal(size=(B, T, K, H)).astype(np.float32)
    seg = np.array([[1] * 5 + [2] * 3, [1] * 8], np.int32)
    bias = attention_bias(jnp.asarray(seg), causal=True)
    out = dot_attention(q, k, v, bias)
    # Independent reference: numpy softmax attention, kv head j serves query heads 2j and 2j+1.
    kr, vr = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)
    logits = np.einsum("btnh,bsnh->bnts", q, kr) / np.sqrt(H)
    allowed = (seg[:, :, None] == seg[:, None, :]) & np.tril(np.ones((T, T), bool))[None]
    logits = np.where(allowed[:, None], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(out, np.einsum("bnts,bsnh->btnh", p, vr), rtol=1e-5, atol=1e-6)


def test_rotary_attention_is_relative():
    """Shifting every position by a constant leaves rotary-model logits unchanged."""
    cfg = _cfg()
    params = _params(cfg)
    tokens = _tokens(1, 12)
    pos = np.arange(12, dtype=np.int32)[None]
    a = decoder.apply(params, {"tokens": tokens, "positions": pos}, cfg)
    b = decoder.apply(params, {"tokens": tokens, "positions": pos + 37}, cfg)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_counts_match_hand_computed_values():
    # tiny: L=2, D=128, N=4, H=32, F=512, V=384, rotary, tied.
    cfg = default_model_config("tiny")
    per_layer = 4 * 128 * 128 + 2 * 128 * 512 + 4 * 128  # q,k,v,o + mlp + 2 LayerNorms
    assert per_layer == 197_120
    counts = count_params(cfg)
    assert counts["non_embedding"] == 2 * per_layer + 2 * 128 == 394_496
    assert counts["total"] == 394_496 + 384 * 128 == 443_648
    flops = flops_per_token(cfg, seq_len=256)
    matmul = 2 * (4 * 128 * 128 + 2 * 128 * 512) + 128 * 384
    assert flops["flops_per_token"] == 6 * matmul + 12 * 2 * 256 * 128 == 3_440_640
    assert flops["flops_per_token_6n"] == 6 * 394_496
    # Untied, learned positions, GQA: counted from the actual parameter shapes.
    for kw in [dict(tie_embeddings=False), dict(positions="learned"), dict(n_kv_heads=2)]:
        c = _cfg(**kw)
        shapes = jax.eval_shape(lambda c=c: nn.unbox(decoder.init(jax.random.key(0), c)))
        total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
        assert count_params(c)["total"] == total, kw


def test_size_table_spans_tiny_to_100m():
    totals = {s: count_params(default_model_config(s))["non_embedding"] for s in SIZES}
    assert totals["tiny"] < 1e6 and totals["base"] > 80e6
    assert list(totals.values()) == sorted(totals.values())


def test_remat_policies_order_the_compiled_memory():
    """Under `lax.scan` the backward keeps what the policy saves: less saved, fewer temporaries.

    (With the unrolled Python loop XLA:CPU schedules the recomputation early and the peak does not
    drop; see the README's remat table.)
    """
    tokens = _tokens(B=8, T=128)

    def temp_bytes(remat):
        cfg = _cfg(n_layers=4, layer_loop="scan", remat=remat)
        params = _params(cfg)
        loss = lambda p: decoder.apply(p, {"tokens": tokens}, cfg).std()
        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    none, save_attn, full = temp_bytes("none"), temp_bytes("save_attn"), temp_bytes("full")
    assert full < save_attn < none and full < 0.5 * none
