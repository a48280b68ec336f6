"""Direct preference optimisation (Rafailov et al. 2023) with precomputed reference log-probs.

A batch row is one pair: `chosen_*` and `rejected_*` packed-style rows [B, T] (tokens,
segment_ids, positions, loss_mask on the response) and `ref_chosen_logp`, `ref_rejected_logp` [B]
(prefs/pairs.py). loss = -log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r))), averaged
over pairs, logp being the summed log-probability of the response tokens.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from objectives.causal_lm import token_nll

SIDES = ("chosen", "rejected")
SIDE_KEYS = ("tokens", "segment_ids", "positions", "loss_mask")
# Batch key -> rank (the loop's shardings): two packed-style rows and two reference scalars.
PAIR_KEYS = {f"{s}_{k}": 2 for s in SIDES for k in SIDE_KEYS} | {f"ref_{s}_logp": 1 for s in SIDES}
PAIR_KEYS["weight"] = 1  # 1 for a pair, 0 for a row that pads the last held-out batch


def sequence_logp(logits_BTV: jax.Array, side: dict) -> jax.Array:
    """Summed log p [B] of the response tokens of one side (tokens, segment_ids, loss_mask)."""
    tokens_BT, seg_BT, mask_BT = side["tokens"], side["segment_ids"], side["loss_mask"]
    keep_BT = (seg_BT[:, 1:] == seg_BT[:, :-1]) & (seg_BT[:, 1:] != 0) & (mask_BT[:, 1:] != 0)
    nll_BT = token_nll(logits_BTV[:, :-1], tokens_BT[:, 1:])
    return -(nll_BT * keep_BT.astype(jnp.float32)).sum(-1)


def side(batch: dict, prefix: str) -> dict:
    """The `prefix` ('chosen' / 'rejected') row of a pair batch under the model's key names."""
    return {k: batch[f"{prefix}_{k}"] for k in SIDE_KEYS if f"{prefix}_{k}" in batch}


def make_logp_fn(apply_fn: Callable, cfg) -> Callable:
    """`logp_fn(params, batch, rng=None) -> (logp chosen [B], logp rejected [B])`: what the loss
    trains and the reference is scored with (one definition for both)."""

    def logp_fn(params, batch: dict, rng: jax.Array | None = None):
        keys = (None, None) if rng is None else tuple(jax.random.split(rng))
        out = []
        for prefix, key in zip(SIDES, keys, strict=True):
            s = side(batch, prefix)
            out.append(sequence_logp(apply_fn(params, s, cfg, rngs=key), s))
        return tuple(out)

    return logp_fn


def make_loss_fn(cfg, apply_fn: Callable, *, beta: float = 0.1) -> Callable:
    """Builds `loss_fn(params, batch, rng) -> (loss, aux)`, the mean DPO loss over pairs; aux
    sums over the pairs (`tokens` counts them; `weight` [B] is 0 on padding rows) the loss
    (`nll_sum`), pairs with a positive implicit reward (`accuracy_sum`), the policy's log-prob
    margin logp_c - logp_r (`margin_sum`) and the implicit reward margin (`reward_margin_sum`)."""
    logp_fn = make_logp_fn(apply_fn, cfg)

    def loss_fn(params, batch: dict, rng: jax.Array | None = None):
        logp_c_B, logp_r_B = logp_fn(params, batch, rng)
        reward_B = beta * (
            (logp_c_B - batch["ref_chosen_logp"]) - (logp_r_B - batch["ref_rejected_logp"])
        )
        loss_B = -jax.nn.log_sigmoid(reward_B)
        w_B = batch["weight"].astype(jnp.float32) if "weight" in batch else jnp.ones_like(loss_B)
        n = w_B.sum()
        aux = {
            "nll_sum": (w_B * loss_B).sum(),
            "tokens": n,
            "bytes": n,
            "accuracy_sum": (w_B * (reward_B > 0)).sum(),
            "margin_sum": (w_B * (logp_c_B - logp_r_B)).sum(),
            "reward_margin_sum": (w_B * reward_B).sum(),
        }
        return aux["nll_sum"] / jnp.maximum(n, 1.0), aux

    return loss_fn
