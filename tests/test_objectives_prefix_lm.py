"""Prefix LM (decoder with a bidirectional prefix) and the classification loss."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from models import decoder, encoder
from models.sizes import default_model_config
from objectives.classification import make_loss_fn as classification_loss
from objectives.prefix_lm import PrefixLMTransform, make_loss_fn


def _jit(fn):
    """`fn(params, batch, cfg)` jitted with the config closed over (eager dispatch is slower)."""
    jitted = jax.jit(fn, static_argnums=2)
    return lambda params, batch, cfg: jitted(params, batch, ml_collections.FrozenConfigDict(cfg))


def _cfg(**kw):
    cfg = default_model_config("tiny")
    cfg.update(n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=64)
    cfg.update(kw)
    return cfg


def test_prefix_split_per_segment():
    seg = np.array([[1] * 6 + [2] * 5 + [0] * 3, [1] * 14], np.int32)
    batch = {"tokens": seg * 7, "segment_ids": seg, "positions": seg * 0}
    for i in range(20):
        out = PrefixLMTransform()(batch, np.random.default_rng(i))
        for b, (_, lo, hi) in [(0, (1, 0, 6)), (0, (2, 6, 11)), (1, (1, 0, 14))]:
            p = out["prefix_mask"][b, lo:hi]
            c = int(p.sum())
            assert 1 <= c <= hi - lo - 1 and (p[:c] == 1).all()  # a non-empty leading prefix
            np.testing.assert_array_equal(out["loss_mask"][b, lo:hi], 1 - p)
        assert (out["prefix_mask"][0, 11:] == 0).all() and (out["loss_mask"][0, 11:] == 0).all()


def test_prefix_is_bidirectional_and_the_rest_causal():
    cfg = _cfg()
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    tokens = np.random.default_rng(0).integers(0, 64, (1, 10)).astype(np.int32)
    prefix = np.array([[1] * 4 + [0] * 6], np.int32)
    batch = {"tokens": tokens, "prefix_mask": prefix}
    base = _jit(decoder.apply)(params, batch, cfg)
    later_prefix = dict(batch, tokens=tokens.copy())
    later_prefix["tokens"][0, 3] = (tokens[0, 3] + 1) % 64
    out = _jit(decoder.apply)(params, later_prefix, cfg)
    assert np.abs(np.asarray(out[0, 0] - base[0, 0])).max() > 1e-4  # position 0 sees position 3
    suffix = dict(batch, tokens=tokens.copy())
    suffix["tokens"][0, 7] = (tokens[0, 7] + 1) % 64
    out = _jit(decoder.apply)(params, suffix, cfg)
    np.testing.assert_allclose(out[0, :7], base[0, :7], atol=1e-5)  # nothing sees the future
    # The loss counts only targets after the prefix: tokens 4..9, predicted from positions 3..8.
    loss_fn = make_loss_fn(cfg, decoder.apply)
    _, aux = loss_fn(params, dict(batch, loss_mask=1 - prefix))
    assert aux["tokens"] == 6


def test_classification_loss_matches_numpy():
    cfg = _cfg(family="encoder", num_classes=3)
    params = nn.unbox(encoder.init(jax.random.key(0), cfg))
    rng = np.random.default_rng(0)
    batch = {
        "tokens": rng.integers(0, 64, (4, 8)).astype(np.int32),
        "segment_ids": np.array([[1] * 8] * 3 + [[0] * 8], np.int32),
        "labels": np.array([0, 2, -1, 1], np.int32),  # row 2 unlabelled, row 3 padding
    }
    loss_fn = jax.jit(classification_loss(cfg, encoder.apply))  # eager dispatch is slow
    loss, aux = loss_fn(params, batch)
    logits = jax.jit(lambda p, b: encoder.apply(p, b, cfg)["class_logits"])(params, batch)
    logits = np.asarray(logits, np.float64)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(loss, -(lp[0, 0] + lp[1, 2]) / 2, rtol=1e-5)
    assert aux["tokens"] == 2
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, batch)[0]))(params)
    assert np.abs(np.asarray(grads["classifier"])).max() > 0
    assert jnp.abs(grads["layers"]["q"]).max() > 0


def _nll_numpy(row_V: np.ndarray, target: int) -> float:
    row = row_V.astype(np.float64)
    top = row.max()
    return float(np.log(np.exp(row - top).sum()) + top - row[target])


def test_prefix_lm_loss_matches_numpy():
    """The transform's masks through the loss, against a numpy loop that counts target t + 1
    only when it continues the segment of t and lies after that segment's prefix."""
    B, T, V = 3, 16, 64
    rng = np.random.default_rng(0)
    seg = np.array(
        [[1] * 5 + [2] * 7 + [3] * 4, [1] * 9 + [0] * 7, [1] * 2 + [2] * 1 + [0] * 13], np.int32
    )
    tokens = np.where(seg > 0, rng.integers(1, V, (B, T)), 0).astype(np.int32)
    batch = {"tokens": tokens, "segment_ids": seg, "positions": np.zeros_like(seg)}
    out = PrefixLMTransform()(batch, np.random.default_rng(3))
    prefix = out["prefix_mask"]
    logits = rng.normal(size=(B, T, V)).astype(np.float32) * 2
    cfg = _cfg(vocab_size=V)
    loss, aux = make_loss_fn(cfg, lambda p, b, c, rngs=None: jnp.asarray(logits))(None, out)

    nll, n = 0.0, 0
    for b in range(B):
        for t in range(T - 1):
            same = seg[b, t] != 0 and seg[b, t + 1] == seg[b, t]
            if same and not prefix[b, t + 1]:
                nll += _nll_numpy(logits[b, t], tokens[b, t + 1])
                n += 1
    # Prefixes are 1..n-1 tokens of each piece of n >= 2; the 1-token piece has no target.
    assert 0 < n < (4 + 6 + 3) + 8 + 1
    assert float(aux["tokens"]) == n
    np.testing.assert_allclose(float(aux["nll_sum"]), nll, rtol=1e-5)
    np.testing.assert_allclose(float(loss), nll / n, rtol=1e-5)
