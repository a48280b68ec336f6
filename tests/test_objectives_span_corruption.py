"""Span corruption: hand-worked example, reconstruction, packing, noise density and span lengths."""

import jax.numpy as jnp
import numpy as np
import pytest

from data.tokenizer import ByteTokenizer
from objectives.span_corruption import (
    SpanCorruptionTransform,
    corrupt,
    default_target_len,
    noise_mask,
    span_counts,
)
from objectives.transforms import segments, special_ids

TOK = ByteTokenizer(num_sentinels=100)
IDS = special_ids(TOK)
S = [TOK.sentinel(i) for i in range(100)]


def test_hand_worked_corruption():
    tokens = np.arange(10, 20)
    mask = np.zeros(10, bool)
    mask[[2, 3, 7]] = True
    inputs, targets = corrupt(tokens, mask, IDS)
    assert inputs.tolist() == [10, 11, S[0], 14, 15, 16, S[1], 18, 19]
    assert targets.tolist() == [S[0], 12, 13, S[1], 17]


def test_span_counts_follow_t5():
    assert span_counts(100, 0.15, 3.0) == (15, 5)
    assert span_counts(512, 0.15, 3.0) == (77, 26)  # T5's 568-token rows give 512 inputs
    assert span_counts(3, 0.15, 3.0) == (1, 1)  # at least one noise token, one span
    assert default_target_len(128) == 32  # 19 noise + 6 sentinels + EOS + slack -> 32


def _decorrupt(inputs, targets):
    """Rebuilds the original piece: each sentinel in the input replaced by its target span."""
    spans, cur = {}, None
    for t in targets[:-1]:  # the last target is EOS
        if t in S:
            cur = t
            spans[cur] = []
        else:
            spans[cur].append(t)
    out = []
    for t in inputs:
        out += spans[t] if t in S else [t]
    return out


def test_transform_is_invertible_and_packs_segments():
    rng = np.random.default_rng(0)
    T = 128
    tokens = rng.integers(TOK.offset, TOK.offset + 256, (3, T)).astype(np.int32)
    seg = np.zeros((3, T), np.int32)
    seg[0] = 1
    seg[1, :70], seg[1, 70:120] = 1, 2  # two packed pieces, then padding
    tokens[1, 69], tokens[1, 119] = TOK.eos_id, TOK.eos_id
    seg[2, :1] = 1  # a 1-token piece: nothing to corrupt
    tokens = np.where(seg > 0, tokens, 0)
    t = SpanCorruptionTransform(IDS, T)
    out = t({"tokens": tokens, "segment_ids": seg}, np.random.default_rng(1))
    assert out["targets"].shape == (3, t.target_len)
    for b in range(3):
        in_segs = segments(out["inputs_segment_ids"][b])
        tgt_segs = segments(out["targets_segment_ids"][b])
        assert [s for s, _, _ in in_segs] == [s for s, _, _ in tgt_segs]
        for (s, lo, hi), (_, tlo, thi) in zip(in_segs, tgt_segs, strict=True):
            inputs, targets = out["inputs"][b, lo:hi], out["targets"][b, tlo:thi]
            original = tokens[b][seg[b] == s]
            assert targets[-1] == TOK.eos_id
            assert _decorrupt(list(inputs), list(targets)) == list(original)
            np.testing.assert_array_equal(out["inputs_positions"][b, lo:hi], np.arange(hi - lo))
            if len(original) > 1:  # the trailing EOS is never noise
                assert inputs[-1] == original[-1] or original[-1] != TOK.eos_id
    assert out["targets"][2, :2].tolist() == [TOK.eos_id, 0]


def test_overflowing_pieces_are_dropped_from_both_sides():
    T = 64
    tokens = np.full((1, T), TOK.offset + 5, np.int32)
    seg = np.repeat(np.arange(1, 17), 4)[None].astype(np.int32)  # 16 pieces of 4 tokens
    t = SpanCorruptionTransform(IDS, T, target_len=10)  # 3 targets per piece: 3 fit
    out = t({"tokens": tokens, "segment_ids": seg}, np.random.default_rng(0))
    assert sorted(set(out["targets_segment_ids"][0]) - {0}) == [1, 2, 3]
    assert sorted(set(out["inputs_segment_ids"][0]) - {0}) == [1, 2, 3]


@pytest.mark.parametrize("n", [100, 128, 501])
def test_noise_density_and_mean_span_length(n):
    rng = np.random.default_rng(n)
    noise, lengths, starts_with_noise = 0, [], 0
    for _ in range(400):
        m = noise_mask(n, 0.15, 3.0, rng)
        noise += m.sum()
        assert m.sum() == span_counts(n, 0.15, 3.0)[0]  # exactly, every time
        edges = np.diff(np.concatenate([[0], m.astype(int), [0]]))
        lengths += list(np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1))
        starts_with_noise += m[0]
    assert abs(noise / (400 * n) - 0.15) < 0.01
    assert abs(np.mean(lengths) - 3.0) < 0.35  # the span count is rounded
    assert starts_with_noise == 0
    # Span lengths vary (a random composition), not all equal to the mean.
    assert np.std(lengths) > 1.0 and min(lengths) == 1


def test_not_enough_sentinels_is_a_config_error():
    with pytest.raises(ValueError, match="data.num_sentinels"):
        SpanCorruptionTransform(special_ids(ByteTokenizer(num_sentinels=4)), 128)


def _nll_numpy(logits_V: np.ndarray, target: int) -> float:
    row = logits_V.astype(np.float64)
    top = row.max()
    return float(np.log(np.exp(row - top).sum()) + top - row[target])


@pytest.mark.parametrize("objective", ["span_corruption", "seq2seq"])
def test_loss_matches_numpy_on_packed_targets(objective):
    """Span corruption's (and seq2seq's, the same function) loss against a numpy loop over a
    transformed batch of several packed pieces and padding, with a multi-byte token table."""
    import objectives

    T = 48
    rng = np.random.default_rng(0)
    tokens = rng.integers(TOK.offset, TOK.offset + 256, (3, T)).astype(np.int32)
    seg = np.zeros((3, T), np.int32)
    seg[0, :20], seg[0, 20:35], seg[0, 35:] = 1, 2, 3  # three pieces, no padding
    seg[1, :30] = 1  # one piece, then padding
    seg[2, :6], seg[2, 6:9] = 1, 2  # two short pieces, mostly padding
    tokens[0, 19] = tokens[1, 29] = TOK.eos_id
    tokens = np.where(seg > 0, tokens, TOK.pad_id)
    batch = SpanCorruptionTransform(IDS, T)({"tokens": tokens, "segment_ids": seg}, rng)
    target_seg = batch["targets_segment_ids"]
    assert [len({s for s, _, _ in segments(r)}) for r in target_seg] == [3, 1, 2]
    assert (target_seg == 0).any(axis=1).all()  # every row ends in target padding

    V = TOK.vocab_size + 12  # padded vocabulary: ids beyond the tokenizer count no bytes
    bytes_per_token = np.asarray(TOK.bytes_per_token).copy()
    bytes_per_token[TOK.offset + 200 :] = 2  # multi-byte pieces weigh more
    logits = rng.normal(size=(*batch["targets"].shape, V)).astype(np.float32) * 3
    cfg = type("Cfg", (), {"vocab_size": V})
    seen = {}

    def apply(params, b, c, rngs=None):
        seen["keys"] = set(b)
        return jnp.asarray(logits)

    loss_fn = objectives.get_loss_fn(objective)(cfg, apply, bytes_per_token=bytes_per_token)
    loss, aux = loss_fn(None, {k: jnp.asarray(v) for k, v in batch.items()})

    nll = n = n_bytes = 0.0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if target_seg[b, t] == 0:
                continue
            target = batch["targets"][b, t]
            nll += _nll_numpy(logits[b, t], target)
            n += 1
            n_bytes += bytes_per_token[target] if target < len(bytes_per_token) else 0
    assert "inputs" in seen["keys"] and "targets" in seen["keys"]
    assert float(aux["tokens"]) == n
    np.testing.assert_allclose(float(aux["nll_sum"]), nll, rtol=1e-5)
    np.testing.assert_allclose(float(loss), nll / n, rtol=1e-5)
    # Sentinels and EOS are targets (counted in tokens) but carry no bytes.
    assert np.isin(batch["targets"][target_seg > 0], [*S, TOK.eos_id]).sum() >= 6
    assert float(aux["bytes"]) == n_bytes
