"""Causal language-modelling loss: next-token cross-entropy within packed documents.

Position t predicts token t+1 only when both belong to the same (non-padding) segment, so neither
padding nor the boundary between two packed documents carries loss. The loss is the mean over
counted targets (nats per token); `aux` carries the sums needed to aggregate exactly across steps
and devices: `nll_sum`, `tokens` and `bytes` (raw text bytes of the counted targets, for bits per
byte that compare across tokenizers).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def next_token_targets(batch: dict) -> tuple[jax.Array, jax.Array]:
    """(targets [B, T-1], loss mask [B, T-1] as f32) for predicting tokens[:, 1:]."""
    tokens_BT = batch["tokens"]
    seg_BT = batch.get("segment_ids", jnp.ones_like(tokens_BT))
    mask_BT = (seg_BT[:, 1:] == seg_BT[:, :-1]) & (seg_BT[:, 1:] != 0)
    if "loss_mask" in batch:  # e.g. response-only losses; applies to the predicted token
        mask_BT = mask_BT & (batch["loss_mask"][:, 1:] != 0)
    return tokens_BT[:, 1:], mask_BT.astype(jnp.float32)


def token_nll(logits_BTV: jax.Array, targets_BT: jax.Array, dtype=jnp.float32) -> jax.Array:
    """Per-token negative log-likelihood, the log-softmax computed in `dtype` (f32 by default)."""
    logits_BTV = logits_BTV.astype(dtype)
    lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    target_logit_BT = jnp.take_along_axis(logits_BTV, targets_BT[..., None], axis=-1)[..., 0]
    return lse_BT - target_logit_BT


def byte_table(vocab_size: int, bytes_per_token: np.ndarray | None) -> jax.Array:
    """[V] raw bytes each id stands for (ids beyond the tokenizer's vocabulary, padding, count 0;
    None: one byte per token), for the bits-per-byte sums of every loss."""
    if bytes_per_token is None:
        return jnp.ones((vocab_size,), jnp.float32)
    table = np.zeros((vocab_size,), np.float32)
    n = min(len(bytes_per_token), vocab_size)  # synthetic benchmarks may truncate
    table[:n] = bytes_per_token[:n]
    return jnp.asarray(table)


def make_loss_fn(cfg, apply_fn: Callable, *, bytes_per_token: np.ndarray | None = None) -> Callable:
    """Builds `loss_fn(params, batch, rng) -> (loss, aux)` for causal LM training.

    Args:
      cfg: the model config (passed to `apply_fn`).
      apply_fn: `apply(params, batch, cfg, rngs=...) -> logits [B, T, V]`.
      bytes_per_token: [tokenizer vocab] raw bytes each id stands for; ids beyond it (vocab
        padding) count 0. None counts one byte per token.
    """
    table_V = byte_table(cfg.vocab_size, bytes_per_token)

    def loss_fn(params, batch: dict, rng: jax.Array | None = None):
        logits_BTV = apply_fn(params, batch, cfg, rngs=rng)
        targets_BT, mask_BT = next_token_targets(batch)
        nll_BT = token_nll(logits_BTV[:, :-1], targets_BT, getattr(cfg, "loss_dtype", "float32"))
        nll_BT = nll_BT.astype(jnp.float32) * mask_BT  # sums over tokens always in f32
        tokens = mask_BT.sum()
        aux = {
            "nll_sum": nll_BT.sum(),
            "tokens": tokens,
            "bytes": (jnp.take(table_V, targets_BT) * mask_BT).sum(),
        }
        return nll_BT.sum() / jnp.maximum(tokens, 1.0), aux

    return loss_fn
