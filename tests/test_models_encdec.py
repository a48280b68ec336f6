"""Encoder-decoder family: causal decoder, cross-attention, packing isolation, counts by hand."""

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from experiments.families import t5_model
from models import encdec
from models.counting import count_params, flops_per_token
from models.sizes import default_model_config


def _jit(fn):
    """`fn(params, batch, cfg)` jitted with the config closed over (eager dispatch is slower)."""
    jitted = jax.jit(fn, static_argnums=2)
    return lambda params, batch, cfg: jitted(params, batch, ml_collections.FrozenConfigDict(cfg))


def _cfg(version="1.1", **kw):
    cfg = default_model_config("tiny")
    cfg.update(n_layers=2, d_model=32, n_heads=2, d_ff=64, vocab_size=64)
    t5_model(cfg, version)
    cfg.update(kw)
    return cfg


def _batch(seed=0, S=10, T=6):
    rng = np.random.default_rng(seed)
    return {
        "inputs": rng.integers(0, 64, (2, S)).astype(np.int32),
        "targets": rng.integers(0, 64, (2, T)).astype(np.int32),
    }


def test_shift_right_restarts_every_segment():
    targets = np.array([[5, 6, 7, 8, 9, 0]])
    seg = np.array([[1, 1, 1, 2, 2, 0]])
    assert encdec.shift_right(targets, seg).tolist() == [[0, 5, 6, 0, 8, 0]]


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_decoder_is_causal_and_reads_the_whole_input(version):
    cfg = _cfg(version)
    params = nn.unbox(encdec.init(jax.random.key(0), cfg))
    batch = _batch()
    base = _jit(encdec.apply)(params, batch, cfg)
    for t in [0, 3]:
        changed = dict(batch, targets=batch["targets"].copy())
        changed["targets"][:, t] = (changed["targets"][:, t] + 1) % 64
        out = _jit(encdec.apply)(params, changed, cfg)
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)  # t predicts t
        assert np.abs(np.asarray(out[:, t + 1] - base[:, t + 1])).max() > 1e-4
    late_input = dict(batch, inputs=batch["inputs"].copy())
    late_input["inputs"][:, -1] = (late_input["inputs"][:, -1] + 1) % 64
    out = _jit(encdec.apply)(params, late_input, cfg)
    assert (np.abs(np.asarray(out - base)).max(-1) > 1e-5).all()  # every target position


def test_packed_pairs_are_isolated():
    cfg = _cfg()
    params = nn.unbox(encdec.init(jax.random.key(1), cfg))
    one, two = _batch(1, S=5, T=3), _batch(2, S=4, T=4)
    packed = {
        "inputs": np.concatenate([one["inputs"][:1], two["inputs"][:1]], 1),
        "inputs_segment_ids": np.array([[1] * 5 + [2] * 4]),
        "inputs_positions": np.array([list(range(5)) + list(range(4))]),
        "targets": np.concatenate([one["targets"][:1], two["targets"][:1]], 1),
        "targets_segment_ids": np.array([[1] * 3 + [2] * 4]),
        "targets_positions": np.array([list(range(3)) + list(range(4))]),
    }
    out = _jit(encdec.apply)(params, packed, cfg)
    alone = _jit(encdec.apply)(params, {k: v[:1] for k, v in two.items()}, cfg)
    np.testing.assert_allclose(out[0, 3:], alone[0], atol=1e-5)
    alone = _jit(encdec.apply)(params, {k: v[:1] for k, v in one.items()}, cfg)
    np.testing.assert_allclose(out[0, :3], alone[0], atol=1e-5)


def test_counts_by_hand():
    cfg = _cfg("1.1", n_decoder_layers=3)
    D, F, V, N, R = 32, 64, 64, 2, 32
    enc_layer = 4 * D * D + 3 * D * F + 2 * D  # attn, gated MLP, 2 RMSNorms (scale only)
    dec_layer = enc_layer + 4 * D * D + D  # + cross-attention and its norm
    non_embedding = 2 * enc_layer + 3 * dec_layer + 2 * D  # + the two final norms
    counts = count_params(cfg)
    assert counts["non_embedding"] == non_embedding == 63_968
    assert counts["embedding"] == V * D + 2 * R * N + D * V  # shared table, 2 bias tables, untied
    shapes = jax.eval_shape(lambda: nn.unbox(encdec.init(jax.random.key(0), cfg)))
    assert counts["total"] == sum(x.size for x in jax.tree.leaves(shapes))
    T, S = 16, 8  # 16 input, 8 target tokens per row
    row = 6 * (2 * (4 * D * D + 3 * D * F) * T)  # encoder
    row += 6 * 3 * ((4 * D * D + 3 * D * F) + 2 * D * D) * S + 6 * 3 * 2 * D * D * T  # decoder
    row += 6 * D * V * S + 12 * D * (2 * T * T + 3 * (S * S + S * T))
    assert flops_per_token(cfg, T, target_len=S)["flops_per_token"] == row / T
