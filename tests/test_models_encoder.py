"""Encoder family: bidirectional attention, padding and packing isolation, heads, counts."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from experiments.families import bert_model
from models import encoder
from models.counting import count_params, flops_per_token
from models.sizes import default_model_config


def _jit(fn):
    """`fn(params, batch, cfg)` jitted with the config closed over (eager dispatch is slower)."""
    jitted = jax.jit(fn, static_argnums=2)
    return lambda params, batch, cfg: jitted(params, batch, ml_collections.FrozenConfigDict(cfg))


def _cfg(**kw):
    cfg = default_model_config("tiny")
    cfg.update(n_layers=2, d_model=32, n_heads=2, d_ff=64, vocab_size=64, max_len=32)
    bert_model(cfg)
    cfg.update(kw)
    return cfg


def _params(cfg):
    return nn.unbox(encoder.init(jax.random.key(0), cfg))


def test_every_position_sees_every_other_but_not_padding():
    cfg = _cfg()
    params = _params(cfg)
    tokens = np.random.default_rng(0).integers(0, 64, (1, 10)).astype(np.int32)
    seg = np.array([[1] * 8 + [0] * 2], np.int32)
    base = _jit(encoder.apply)(params, {"tokens": tokens, "segment_ids": seg}, cfg)["logits"]
    late = tokens.copy()
    late[0, 7] = (late[0, 7] + 1) % 64
    out = _jit(encoder.apply)(params, {"tokens": late, "segment_ids": seg}, cfg)["logits"]
    assert np.abs(np.asarray(out[0, :7] - base[0, :7])).min(-1).max() > 0  # all rows change
    assert (np.abs(np.asarray(out[0, :7] - base[0, :7])).max(-1) > 1e-4).all()
    pad = tokens.copy()
    pad[0, 8:] = 5
    out = _jit(encoder.apply)(params, {"tokens": pad, "segment_ids": seg}, cfg)["logits"]
    np.testing.assert_allclose(out[0, :8], base[0, :8], atol=1e-5)


def test_packed_segments_are_isolated():
    cfg = _cfg()
    params = _params(cfg)
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 64, 6).astype(np.int32), rng.integers(0, 64, 5).astype(np.int32)
    packed = {
        "tokens": np.concatenate([a, b])[None],
        "segment_ids": np.array([[1] * 6 + [2] * 5], np.int32),
        "positions": np.array([list(range(6)) + list(range(5))], np.int32),
    }
    out = _jit(encoder.apply)(params, packed, cfg)["logits"]
    np.testing.assert_allclose(
        out[0, 6:], _jit(encoder.apply)(params, {"tokens": b[None]}, cfg)["logits"][0], atol=1e-5
    )


def test_heads_and_counts_by_hand():
    cfg = _cfg(nsp_head=True, num_classes=3)
    params = _params(cfg)
    out = _jit(encoder.apply)(params, {"tokens": np.zeros((2, 8), np.int32)}, cfg)
    assert out["logits"].shape == (2, 8, 64)
    assert out["nsp_logits"].shape == (2, 2) and out["class_logits"].shape == (2, 3)
    D, F, V, L = 32, 64, 64, 2
    layer = 4 * D * D + 4 * D + 2 * D * F + F + D + 2 * 2 * D  # attn+biases, mlp+biases, 2 LNs
    heads = (D * D + D + 2 * D) + (D * D + D) + (2 * D + 2) + (3 * D + 3)  # mlm, pool, nsp, cls
    non_embedding = L * layer + 2 * D + heads  # + embedding LayerNorm; post-LN: no final norm
    embedding = V * D + 32 * D + 2 * D + V  # tokens, positions, types, MLM output bias
    counts = count_params(cfg)
    assert counts["non_embedding"] == non_embedding == 19_493
    assert counts["total"] == non_embedding + embedding
    shapes = jax.eval_shape(lambda: nn.unbox(encoder.init(jax.random.key(0), cfg)))
    assert counts["total"] == sum(x.size for x in jax.tree.leaves(shapes))
    T = 16
    expected = 6 * (L * (4 * D * D + 2 * D * F) + D * D + D * V) + 12 * L * T * D
    assert flops_per_token(cfg, T)["flops_per_token"] == expected
