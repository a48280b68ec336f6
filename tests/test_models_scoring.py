"""Few-shot scoring against a per-request numpy log-softmax of unpadded forward passes."""

import flax.linen as nn
import jax
import numpy as np

from models import decoder
from models.scoring import loglikelihood
from models.sizes import default_model_config


def test_batched_scores_equal_unpadded_reference():
    cfg = default_model_config("tiny")
    cfg.update(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    rng = np.random.default_rng(0)
    requests = [
        (rng.integers(4, 384, c).tolist(), rng.integers(4, 384, x).tolist())
        for c, x in [(3, 2), (7, 1), (2, 5), (5, 3), (1, 1)]
    ]
    apply = jax.jit(lambda p, t: decoder.apply(p, {"tokens": t}, cfg))
    got = loglikelihood(params, requests, cfg, batch_size=4)  # two batches, the last padded
    for (context, continuation), (score, greedy) in zip(requests, got, strict=True):
        seq = np.array([context + continuation], np.int32)
        logits = np.asarray(apply(params, seq), np.float64)[0]
        logp = logits - np.log(
            np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)
        )
        logp -= logits.max(-1, keepdims=True)
        want, want_greedy = 0.0, True
        for i, tok in enumerate(continuation):
            row = logp[len(context) + i - 1]
            want += row[tok]
            want_greedy &= int(np.argmax(row)) == tok
        np.testing.assert_allclose(score, want, rtol=1e-5, atol=1e-4)
        assert greedy == want_greedy
    # a continuation made of the greedy tokens is greedy
    context = requests[0][0]
    seq = list(context)
    for _ in range(3):
        seq.append(int(np.argmax(np.asarray(apply(params, np.array([seq], np.int32)))[0, -1])))
    [(_, greedy)] = loglikelihood(params, [(context, seq[len(context) :])], cfg, batch_size=1)
    assert greedy
