"""Masked-LM transform (hand-worked cases and 80/10/10 statistics), NSP pairs, the loss."""

import jax
import jax.numpy as jnp
import numpy as np

from data.tokenizer import ByteTokenizer
from objectives.masked_lm import MaskedLMTransform, make_loss_fn
from objectives.transforms import special_ids

TOK = ByteTokenizer(num_sentinels=8)
IDS = special_ids(TOK)
OFF = TOK.offset  # first byte id


def _batch(B=2, T=12, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(OFF, OFF + 256, (B, T)).astype(np.int32)
    tokens[:, 0], tokens[:, -3] = TOK.bos_id, TOK.eos_id
    seg = np.ones((B, T), np.int32)
    seg[:, -2:] = 0
    tokens[:, -2:] = 0
    pos = np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos}


def test_every_ordinary_token_masked_when_rates_are_extreme():
    batch = _batch()
    out = MaskedLMTransform(IDS, mask_rate=0.999999, mask_frac=1.0, random_frac=0.0)(
        batch, np.random.default_rng(0)
    )
    ordinary = (batch["segment_ids"] > 0) & (batch["tokens"] >= OFF)
    np.testing.assert_array_equal(out["loss_mask"], ordinary)
    np.testing.assert_array_equal(out["tokens"], np.where(ordinary, TOK.mask_id, batch["tokens"]))
    np.testing.assert_array_equal(out["targets"], batch["tokens"])
    # BOS, EOS and padding are never chosen; with mask_frac=0, random_frac=0 nothing changes.
    kept = MaskedLMTransform(IDS, mask_rate=0.999999, mask_frac=0.0, random_frac=0.0)(
        batch, np.random.default_rng(0)
    )
    np.testing.assert_array_equal(kept["tokens"], batch["tokens"])
    np.testing.assert_array_equal(kept["loss_mask"], ordinary)


def test_80_10_10_statistics():
    batch = _batch(B=64, T=512, seed=1)
    out = MaskedLMTransform(IDS)(batch, np.random.default_rng(2))
    ordinary = (batch["segment_ids"] > 0) & (batch["tokens"] >= OFF)
    chosen = out["loss_mask"].astype(bool)
    assert not (chosen & ~ordinary).any()
    n = ordinary.sum()  # ~31k candidates: 1 sigma of the chosen fraction is 0.002
    assert abs(chosen.sum() / n - 0.15) < 0.006
    masked = (out["tokens"] == TOK.mask_id)[chosen].mean()
    unchanged = (out["tokens"] == batch["tokens"])[chosen].mean()
    random = 1 - masked - unchanged
    assert abs(masked - 0.8) < 0.015
    # A random replacement equals the original with probability 1/256.
    assert abs(unchanged - (0.1 + 0.1 / 256)) < 0.01 and abs(random - 0.1 * 255 / 256) < 0.01
    replaced = out["tokens"][chosen & (out["tokens"] != TOK.mask_id)]
    assert (replaced >= OFF).all()  # random tokens are ordinary ids, never specials
    assert (out["tokens"][~chosen] == batch["tokens"][~chosen]).all()


def test_same_generator_same_masks():
    batch, t = _batch(), MaskedLMTransform(IDS)
    a, b = t(batch, np.random.default_rng(5)), t(batch, np.random.default_rng(5))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_nsp_pairs_are_continuations_or_random_half_the_time():
    B, T = 256, 64
    rng = np.random.default_rng(0)
    tokens = rng.integers(OFF, OFF + 256, (B, T)).astype(np.int32)
    batch = {"tokens": tokens, "segment_ids": np.ones((B, T), np.int32), "positions": tokens * 0}
    t = MaskedLMTransform(IDS, mask_rate=1e-9, nsp=True)  # no masking: compare raw tokens
    out = t(batch, np.random.default_rng(1))
    labels = out["nsp_labels"]
    assert out["nsp_labels"].shape == (B,) and abs(labels.mean() - 0.5) < 0.1
    for b in range(B):
        cut = int(np.argmax(out["token_type_ids"][b]))
        assert 16 <= cut < 48 and (out["segment_ids"][b] == 1).all()
        np.testing.assert_array_equal(out["tokens"][b, :cut], tokens[b, :cut])
        is_next = (out["tokens"][b, cut:] == tokens[b, cut:]).all()
        assert is_next == (labels[b] == 0)


def test_loss_counts_only_chosen_positions():
    V = 384
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 12, V)).astype(np.float32)
    batch = MaskedLMTransform(IDS)(_batch(), np.random.default_rng(3))
    batch["loss_mask"][0, 3] = 1  # at least one chosen token
    cfg = type("C", (), {"vocab_size": V, "nsp_head": False})()
    loss_fn = make_loss_fn(cfg, lambda p, b, c, rngs=None: {"logits": jnp.asarray(logits)})
    loss, aux = loss_fn(None, jax.tree.map(jnp.asarray, batch))
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(lp, batch["targets"][..., None], -1)[..., 0]
    m = batch["loss_mask"].astype(bool)
    np.testing.assert_allclose(loss, nll[m].mean(), rtol=1e-5)
    assert aux["tokens"] == m.sum() == aux["bytes"]  # bytes: one per chosen byte token


def _log_softmax(x):
    x = x.astype(np.float64)
    top = x.max(-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def test_loss_with_nsp_matches_numpy():
    """MLM mean over chosen tokens + NSP mean over real rows, against numpy, on NSP pairs built
    from packed rows (several segments) where one row is too short to pair (all padding)."""
    B, T, V = 5, 24, 384
    rng = np.random.default_rng(4)
    tokens = rng.integers(OFF, OFF + 256, (B, T)).astype(np.int32)
    seg = np.ones((B, T), np.int32)
    seg[0, 14:], seg[1, 10:18], seg[1, 18:] = 2, 2, 0  # packed: NSP pairs the first segment
    seg[2, :3], seg[2, 3:] = 1, 2  # first segment of 3 tokens: too short, the row is padding
    seg[4, 20:] = 0
    tokens = np.where(seg > 0, tokens, 0)
    batch = {"tokens": tokens, "segment_ids": seg, "positions": np.zeros_like(tokens)}
    out = MaskedLMTransform(IDS, mask_rate=0.3, nsp=True)(batch, np.random.default_rng(0))
    real = out["segment_ids"][:, 0] > 0
    assert real.tolist() == [True, True, False, True, True]
    assert out["loss_mask"].sum() > 0 and set(out["nsp_labels"][real]) == {0, 1}
    labels = out["nsp_labels"].copy()

    logits = rng.normal(size=(B, T, V)).astype(np.float32) * 2
    nsp_logits = rng.normal(size=(B, 2)).astype(np.float32) * 2
    nsp_logits[2] = [-50.0, 50.0]  # the padding row: a huge loss if it were counted
    cfg = type("C", (), {"vocab_size": V, "nsp_head": True})()
    apply = lambda p, b, c, rngs=None: {
        "logits": jnp.asarray(logits),
        "nsp_logits": jnp.asarray(nsp_logits),
    }
    loss, aux = make_loss_fn(cfg, apply)(None, jax.tree.map(jnp.asarray, out))

    mlm = -np.take_along_axis(_log_softmax(logits), out["targets"][..., None], -1)[..., 0]
    chosen = out["loss_mask"].astype(bool)
    nsp = -_log_softmax(nsp_logits)[np.arange(B), labels]
    correct = (nsp_logits.argmax(-1) == labels) & real
    np.testing.assert_allclose(float(aux["nll_sum"]), mlm[chosen].sum(), rtol=1e-5)
    np.testing.assert_allclose(float(aux["nsp_nll_sum"]), nsp[real].sum(), rtol=1e-5)
    assert float(aux["nsp_nll_count"]) == 4 and float(aux["nsp_accuracy_sum"]) == correct.sum()
    np.testing.assert_allclose(float(loss), mlm[chosen].mean() + nsp[real].mean(), rtol=1e-5)
    # Without the head the NSP term is gone (same batch, same logits).
    cfg.nsp_head = False
    loss_mlm, aux_mlm = make_loss_fn(cfg, apply)(None, jax.tree.map(jnp.asarray, out))
    np.testing.assert_allclose(float(loss_mlm), mlm[chosen].mean(), rtol=1e-5)
    assert "nsp_nll_sum" not in aux_mlm
