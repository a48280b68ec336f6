"""The reward model's Bradley-Terry loss on judged pairs.

A batch row is one pair as DPO's (prefs/loss.py: `chosen_*`, `rejected_*` rows and `weight`,
without reference log-probs). The model scores each side at its last non-pad token (its EOS);
loss = -log sigmoid(r_chosen - r_rejected), averaged over pairs: the negative log-likelihood of
the judge's preference under P(chosen preferred) = sigmoid(r_chosen - r_rejected).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from prefs.heads import at_last
from prefs.loss import SIDE_KEYS, SIDES, side

# Batch key -> rank: two packed-style rows and the padding weight.
REWARD_PAIR_KEYS = {f"{s}_{k}": 2 for s in SIDES for k in SIDE_KEYS} | {"weight": 1}


def make_score_fn(outputs_fn: Callable, cfg) -> Callable:
    """`score_fn(params, rows, rng=None) -> [B]`: the head's value at each row's last token,
    `outputs_fn(params, rows, cfg, rngs=) -> (logits, head [B, T])` (prefs/heads.py)."""

    def score_fn(params, rows: dict, rng=None):
        _, h_BT = outputs_fn(params, rows, cfg, rngs=rng)
        return at_last(h_BT, rows["segment_ids"])

    return score_fn


def bradley_terry(r_chosen_B: jax.Array, r_rejected_B: jax.Array) -> jax.Array:
    """[B] -log sigmoid(r_chosen - r_rejected)."""
    return -jax.nn.log_sigmoid(r_chosen_B - r_rejected_B)


def make_loss_fn(score_fn: Callable) -> Callable:
    """Builds `loss_fn(params, batch, rng) -> (loss, aux)`, the mean Bradley-Terry loss over
    pairs; aux sums over pairs (`tokens` counts them, `weight` 0 on padding rows) the loss
    (`nll_sum`), pairs scored the judge's way (`accuracy_sum`) and the margin r_c - r_r
    (`margin_sum`)."""

    def loss_fn(params, batch: dict, rng: jax.Array | None = None):
        keys = (None, None) if rng is None else tuple(jax.random.split(rng))
        r_c_B, r_r_B = (
            score_fn(params, side(batch, s), k) for s, k in zip(SIDES, keys, strict=True)
        )
        w_B = batch["weight"].astype(jnp.float32)
        n = w_B.sum()
        aux = {
            "nll_sum": (w_B * bradley_terry(r_c_B, r_r_B)).sum(),
            "tokens": n,
            "bytes": n,
            "accuracy_sum": (w_B * (r_c_B > r_r_B)).sum(),
            "margin_sum": (w_B * (r_c_B - r_r_B)).sum(),
        }
        return aux["nll_sum"] / jnp.maximum(n, 1.0), aux

    return loss_fn
