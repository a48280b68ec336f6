"""Few-shot scoring: log-likelihood of candidate continuations given a context (lm-eval-harness's
`loglikelihood` request), batched, for a decoder-only model.

Each request is `(context ids, continuation ids)`; the model reads `context + continuation`
(right-padded into one batch, padding in segment 0 so it is never attended to) and the score is
the sum of log p(continuation token | everything before it), plus whether every continuation token
is the greedy choice (the harness's `is_greedy`). A multiple-choice question is one request per
candidate; the answer is the argmax of the scores (or of the length-normalised scores).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _batch(requests: Sequence[tuple[Sequence[int], Sequence[int]]]):
    T = max(len(c) + len(x) for c, x in requests)
    tokens = np.zeros((len(requests), T), np.int32)
    segment_ids = np.zeros((len(requests), T), np.int32)
    target_mask = np.zeros((len(requests), T), np.float32)  # marks continuation tokens
    for b, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError("every request needs a non-empty context and continuation")
        seq = [*context, *continuation]
        tokens[b, : len(seq)] = seq
        segment_ids[b, : len(seq)] = 1
        target_mask[b, len(context) : len(seq)] = 1.0
    return tokens, segment_ids, target_mask


def make_scorer(apply_fn, cfg):
    """Jitted `(params, tokens, segment_ids, target_mask) -> (loglik [B], is_greedy [B])`."""

    @jax.jit
    def score(params, tokens_BT, segment_ids_BT, target_mask_BT):
        T = tokens_BT.shape[1]
        positions_BT = jnp.broadcast_to(jnp.arange(T), tokens_BT.shape)
        batch = {"tokens": tokens_BT, "segment_ids": segment_ids_BT, "positions": positions_BT}
        logits_BTV = apply_fn(params, batch, cfg).astype(jnp.float32)
        logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1], axis=-1)
        targets_BT = tokens_BT[:, 1:]
        mask_BT = target_mask_BT[:, 1:]
        tok_logp_BT = jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1)[..., 0]
        greedy_BT = jnp.argmax(logp_BTV, axis=-1) == targets_BT
        loglik_B = (tok_logp_BT * mask_BT).sum(-1)
        is_greedy_B = jnp.all(greedy_BT | (mask_BT == 0), axis=-1)
        return loglik_B, is_greedy_B

    return score


def loglikelihood(
    params, requests: Sequence[tuple[Sequence[int], Sequence[int]]], cfg, *, batch_size: int = 32
) -> list[tuple[float, bool]]:
    """(log-likelihood, is_greedy) of each `(context, continuation)` request.

    Args:
      params: unboxed decoder parameters.
      requests: token-id pairs; contexts usually start with BOS.
      cfg: the model config (`family` must be 'decoder').
      batch_size: requests per forward pass (the last batch is padded with copies).
    """
    from models import decoder

    if cfg.get("family", "decoder") != "decoder":
        raise ValueError("scoring supports model.family='decoder'")
    score = make_scorer(decoder.apply, cfg)
    out: list[tuple[float, bool]] = []
    for start in range(0, len(requests), batch_size):
        chunk = list(requests[start : start + batch_size])
        n = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n)  # one compiled batch shape per length
        loglik_B, greedy_B = score(params, *_batch(chunk))
        out += [(float(a), bool(g)) for a, g in zip(loglik_B[:n], greedy_B[:n], strict=True)]
    return out
