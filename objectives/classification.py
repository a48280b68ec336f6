"""Sequence classification (fine-tuning an encoder): cross-entropy on the pooled first token.

Batches carry `tokens`, `segment_ids`, `positions` (one example per row) and `labels` [B] int32;
rows with a negative label or an all-padding row are ignored. `aux` counts examples as `tokens`
(so `loss` is nats per example) and `bytes` as examples too (bits per example), plus
`accuracy_sum` (correct examples).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from objectives.causal_lm import token_nll

BATCH_KEYS = {"tokens": 2, "segment_ids": 2, "positions": 2, "labels": 1}


def make_loss_fn(cfg, apply_fn: Callable, *, bytes_per_token: np.ndarray | None = None) -> Callable:
    """Builds `loss_fn(params, batch, rng) -> (loss, aux)` over `class_logits`.

    Args:
      cfg: the model config (an encoder with `num_classes` > 0).
      apply_fn: `apply(params, batch, cfg, rngs=...) -> {'class_logits': [B, C], ...}`.
      bytes_per_token: unused (accepted for the uniform factory signature).
    """
    del bytes_per_token
    if not cfg.num_classes:
        raise ValueError("objective=classification needs model.num_classes > 0")

    def loss_fn(params, batch: dict, rng: jax.Array | None = None):
        logits_BC = apply_fn(params, batch, cfg, rngs=rng)["class_logits"]
        labels_B = batch["labels"]
        real_B = ((labels_B >= 0) & (batch["segment_ids"][:, 0] > 0)).astype(jnp.float32)
        nll_B = token_nll(logits_BC, jnp.maximum(labels_B, 0)) * real_B
        n = real_B.sum()
        correct = ((logits_BC.argmax(-1) == labels_B) * real_B).sum()
        aux = {"nll_sum": nll_B.sum(), "tokens": n, "bytes": n, "accuracy_sum": correct}
        return nll_B.sum() / jnp.maximum(n, 1.0), aux

    return loss_fn
