"""RL from a reward model: advantages (GAE, group-relative) and the clipped PPO objective.

Token arrays are [B, T] over the rollout rows `prompt + response` (prefs/rollout.py) and indexed
by the token they score: column t holds log p(token t | tokens < t), the value of the state before
token t, its reward and advantage; `mask` is 1 on the response tokens (the actions), so column 0
is never an action.

Rewards (InstructGPT): each action pays -beta * (log pi_old - log pi_ref), the per-token KL
penalty to the frozen reference; the last action adds the reward model's score. PPO estimates
advantages with GAE over a value head; the group-relative variant (GRPO) samples `k` responses
per prompt and uses each response's total reward minus its group's mean, divided by the group's
standard deviation, as the advantage of all its tokens, with no value head.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from objectives.causal_lm import token_nll

# Batch key -> rank of a rollout batch (the loop's shardings).
ROLLOUT_KEYS = {
    **dict.fromkeys(("tokens", "segment_ids", "positions", "loss_mask"), 2),
    **dict.fromkeys(("old_logp", "old_values", "advantages", "returns"), 2),
    **dict.fromkeys(("score", "kl", "length"), 1),  # per row: logged, not trained on
}


def token_logp(logits_BTV: jax.Array, tokens_BT: jax.Array, temperature: float) -> jax.Array:
    """[B, T] log p(token t | tokens < t) under logits / temperature (the sampler's
    distribution before top-k / top-p); column 0 is 0."""
    scale = 1.0 / temperature if temperature > 0 else 1.0
    logp_BT = -token_nll(logits_BTV[:, :-1] * scale, tokens_BT[:, 1:])
    return jnp.pad(logp_BT, ((0, 0), (1, 0)))


def state_values(h_BT: jax.Array) -> jax.Array:
    """[B, T] the value of the state before token t: the head at position t - 1."""
    return jnp.pad(h_BT[:, :-1], ((0, 0), (1, 0)))


def token_rewards(score_B, kl_BT, mask_BT, beta: float) -> jax.Array:
    """[B, T] -beta * kl on every action, plus `score` on each row's last action."""
    T = mask_BT.shape[1]
    last_B = jnp.where(mask_BT > 0, jnp.arange(T)[None, :], -1).max(-1)
    final_BT = (jnp.arange(T)[None, :] == last_B[:, None]).astype(jnp.float32)
    return (-beta * kl_BT + score_B[:, None] * final_BT) * mask_BT


def gae(rewards_BT, values_BT, mask_BT, gamma: float, lam: float):
    """(advantages, returns) [B, T] by generalised advantage estimation within each row's
    actions (contiguous); the state after the last action is terminal (value 0)."""

    def back(carry, xs):
        next_v_B, next_a_B = carry
        r_B, v_B, m_B = xs
        delta_B = r_B + gamma * next_v_B - v_B
        a_B = (delta_B + gamma * lam * next_a_B) * m_B
        return (v_B * m_B, a_B), a_B

    B = rewards_BT.shape[0]
    xs = tuple(x.T[::-1] for x in (rewards_BT, values_BT, mask_BT.astype(jnp.float32)))
    zeros = jnp.zeros((B,), jnp.float32)
    _, adv_TB = jax.lax.scan(back, (zeros, zeros), xs)
    adv_BT = adv_TB[::-1].T
    return adv_BT, (adv_BT + values_BT) * mask_BT


def whiten(x_BT, mask_BT) -> jax.Array:
    """x normalised to mean 0 and standard deviation 1 over the masked entries."""
    m = mask_BT.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (x_BT * m).sum() / n
    var = (jnp.square(x_BT - mean) * m).sum() / n
    return (x_BT - mean) * jax.lax.rsqrt(var + 1e-8) * m


def group_advantages(reward_B: jax.Array, k: int, scale: bool = True) -> jax.Array:
    """[B] reward minus the mean of its group of `k` consecutive rows, divided by the group's
    standard deviation (+1e-6) when `scale` (GRPO)."""
    r_GK = reward_B.reshape(-1, k)
    adv_GK = r_GK - r_GK.mean(-1, keepdims=True)
    if scale:
        adv_GK = adv_GK / (r_GK.std(-1, keepdims=True) + 1e-6)
    return adv_GK.reshape(-1)


def make_loss_fn(outputs_fn: Callable, cfg, rl) -> Callable:
    """Builds `loss_fn(params, batch, rng) -> (loss, aux)`: the clipped PPO surrogate plus
    `rl.vf_coef` times the clipped value loss (0 for the group-relative variant), a mean over
    the batch's action tokens.

    Args:
      outputs_fn: `(params, batch, cfg, rngs=) -> (logits [B, T, V], value head [B, T])`.
      cfg: the model config.
      rl: the `rl` block (clip, value_clip, vf_coef, temperature, algo).

    aux sums over action tokens the loss (`nll_sum`), the policy and value losses, the fraction
    of clipped ratios and log(pi_old / pi) (`approx_kl`); over rows (`*_count`) the reward
    model's score, the sequence KL to the reference and the response length.
    """
    with_values = rl.algo == "ppo"

    def loss_fn(params, batch: dict, rng: jax.Array | None = None):
        logits_BTV, h_BT = outputs_fn(params, batch, cfg, rngs=rng)
        m_BT = batch["loss_mask"].astype(jnp.float32)
        logp_BT = token_logp(logits_BTV, batch["tokens"], rl.temperature)
        log_ratio_BT = (logp_BT - batch["old_logp"]) * m_BT
        ratio_BT = jnp.exp(log_ratio_BT)
        adv_BT = batch["advantages"]
        clipped_BT = jnp.clip(ratio_BT, 1 - rl.clip, 1 + rl.clip)
        pg_BT = jnp.maximum(-adv_BT * ratio_BT, -adv_BT * clipped_BT) * m_BT
        vf_BT = jnp.zeros_like(pg_BT)
        if with_values:
            v_BT, old_BT, ret_BT = state_values(h_BT), batch["old_values"], batch["returns"]
            v_clip_BT = old_BT + jnp.clip(v_BT - old_BT, -rl.value_clip, rl.value_clip)
            vf_BT = 0.5 * jnp.maximum(jnp.square(v_BT - ret_BT), jnp.square(v_clip_BT - ret_BT))
            vf_BT = vf_BT * m_BT
        n = m_BT.sum()
        rows_B = (m_BT.sum(-1) > 0).astype(jnp.float32)
        aux = {
            "nll_sum": (pg_BT + rl.vf_coef * vf_BT).sum(),
            "tokens": n,
            "bytes": n,
            "policy_loss_sum": pg_BT.sum(),
            "value_loss_sum": vf_BT.sum(),
            "clip_fraction_sum": ((jnp.abs(ratio_BT - 1) > rl.clip) * m_BT).sum(),
            "approx_kl_sum": (-log_ratio_BT).sum(),
        }
        for name in ("score", "kl", "length"):
            aux[f"{name}_sum"] = (batch[name] * rows_B).sum()
            aux[f"{name}_count"] = rows_B.sum()
        return aux["nll_sum"] / jnp.maximum(n, 1.0), aux

    return loss_fn
