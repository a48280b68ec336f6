"""Causal-LM loss against an independent numpy computation, with packing and padding masks."""

import numpy as np

import objectives
from objectives.causal_lm import make_loss_fn


class _Cfg:
    vocab_size = 8


def _numpy_reference(logits, tokens, seg, bytes_per_token):
    nll, n, n_bytes = 0.0, 0, 0
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(T - 1):
            if seg[b, t] == 0 or seg[b, t + 1] != seg[b, t]:
                continue  # padding, or the next token starts another document
            row = logits[b, t].astype(np.float64)
            lse = np.log(np.exp(row - row.max()).sum()) + row.max()
            nll += lse - row[tokens[b, t + 1]]
            n += 1
            n_bytes += bytes_per_token[tokens[b, t + 1]]
    return nll, n, n_bytes


def test_loss_masks_and_bits_per_byte():
    rng = np.random.default_rng(0)
    B, T, V = 3, 10, 8
    logits = rng.normal(size=(B, T, V)).astype(np.float32)
    tokens = rng.integers(0, V, (B, T)).astype(np.int32)
    seg = np.array([[1] * 4 + [2] * 6, [1] * 7 + [0] * 3, [0] * 10], np.int32)
    bytes_per_token = np.array([0, 0, 1, 1, 1, 2, 3, 1])  # specials 0 bytes, multi-byte pieces
    loss_fn = make_loss_fn(_Cfg, lambda p, b, c, rngs=None: logits, bytes_per_token=bytes_per_token)
    loss, aux = loss_fn(None, {"tokens": tokens, "segment_ids": seg}, None)
    nll, n, n_bytes = _numpy_reference(logits, tokens, seg, bytes_per_token)
    assert aux["tokens"] == n == 3 + 5 + 6
    np.testing.assert_allclose(aux["nll_sum"], nll, rtol=1e-5)
    np.testing.assert_allclose(loss, nll / n, rtol=1e-5)
    assert aux["bytes"] == n_bytes
    summary = objectives.summarize(aux)
    np.testing.assert_allclose(summary["bits_per_byte"], nll / np.log(2) / n_bytes, rtol=1e-5)


def test_uniform_logits_give_log_vocab():
    B, T, V = 2, 6, 8
    tokens = np.ones((B, T), np.int32) * 3
    loss_fn = make_loss_fn(_Cfg, lambda p, b, c, rngs=None: np.zeros((B, T, V), np.float32))
    loss, aux = loss_fn(None, {"tokens": tokens}, None)
    np.testing.assert_allclose(loss, np.log(V), rtol=1e-6)
    assert aux["bytes"] == B * (T - 1)  # no table: one byte per token
