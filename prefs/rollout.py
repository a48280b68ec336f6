"""Rollouts for RL from a reward model: sample, score, compute advantages, in one jitted call.

`make_rollout_fn(...)` returns `rollout(params, ref_params, rm_params, prompts_BP, pad_B, key)`,
pure and jittable: it samples `N = rl.max_new_tokens` tokens per left-padded prompt with the
KV-cache sampler, forms rows `prompt + response` [B, T = P + N] (`segment_ids` 1 on real tokens,
`positions` counted from each row's first real token, as the sampler counts them; `loss_mask` 1
on the response up to and including its EOS), scores them with the policy (log-probs, values),
the frozen reference (log-probs) and the reward model (its score at the last real token), and
computes the advantages (prefs/rl_loss.py). Every array stays on device, sharded as its inputs
(the model code names logical axes only), so the rollout is as sharding-agnostic as the step.
"""

from collections.abc import Callable

import jax.numpy as jnp

from models.generate import SampleSettings, decoder_sampler
from prefs import rl_loss
from prefs.heads import at_last


def settings_of(rl, eos_id: int, pad_id: int) -> SampleSettings:
    """The sampler settings of an `rl` block (no top-k / top-p: log-probs are exact)."""
    return SampleSettings(
        max_new_tokens=rl.max_new_tokens,
        temperature=rl.temperature,
        stop_ids=(eos_id,),
        pad_id=pad_id,
    )


def response_rows(prompts_BP, pad_B, response_BN, eos_id: int) -> dict:
    """`tokens`, `segment_ids`, `positions`, `loss_mask` [B, P + N] and `length` [B] (response
    tokens up to and including the first EOS)."""
    B, P = prompts_BP.shape
    N = response_BN.shape[1]
    is_eos_BN = response_BN == eos_id
    ended_before_BN = jnp.cumsum(is_eos_BN, axis=1) - is_eos_BN  # EOS strictly before
    act_BN = (ended_before_BN == 0).astype(jnp.int32)
    col_T = jnp.arange(P + N)
    prompt_BP = (col_T[None, :P] >= pad_B[:, None]).astype(jnp.int32)
    mask_BT = jnp.concatenate([jnp.zeros((B, P), jnp.int32), act_BN], axis=1)
    return {
        "tokens": jnp.concatenate([prompts_BP, response_BN], axis=1).astype(jnp.int32),
        "segment_ids": jnp.concatenate([prompt_BP, act_BN], axis=1),
        "positions": jnp.maximum(col_T[None, :] - pad_B[:, None], 0).astype(jnp.int32),
        "loss_mask": mask_BT,
        "length": act_BN.sum(-1).astype(jnp.float32),
    }


def make_sample_fn(
    rl,
    cfg,
    settings: SampleSettings,
    policy_outputs: Callable,
    ref_apply: Callable,
    ref_cfg,
    rm_outputs: Callable,
    rm_cfg,
) -> Callable:
    """`sample_fn(params, ref_params, rm_params, prompts_BP, pad_B, key) -> dict`: the rows of
    `response_rows`, `old_logp` and `old_values` (the policy's), `ref_logp`, the reward model's
    `score` [B] and the sequence `kl` [B] = sum of log pi - log pi_ref over the response.

    Args:
      rl: the `rl` block (temperature).
      cfg: the policy's model config.
      settings: sampling settings (`settings_of`).
      policy_outputs: `(params, rows, cfg, rngs=) -> (logits, value head [B, T])`.
      ref_apply: the reference's `apply` (logits); ref_cfg its model config.
      rm_outputs: the reward model's `outputs` (prefs/heads.py); rm_cfg its model config.
    """
    sample = decoder_sampler(cfg, settings)
    eos_id = settings.stop_ids[0]

    def sample_fn(params, ref_params, rm_params, prompts_BP, pad_B, key) -> dict:
        response_BN = sample(params, prompts_BP, pad_B, key)
        rows = response_rows(prompts_BP, pad_B, response_BN, eos_id)
        m_BT = rows["loss_mask"].astype(jnp.float32)
        logits_BTV, h_BT = policy_outputs(params, rows, cfg, rngs=None)
        logp_BT = rl_loss.token_logp(logits_BTV, rows["tokens"], rl.temperature) * m_BT
        ref_logits_BTV = ref_apply(ref_params, rows, ref_cfg)
        ref_BT = rl_loss.token_logp(ref_logits_BTV, rows["tokens"], rl.temperature) * m_BT
        score_B = at_last(rm_outputs(rm_params, rows, rm_cfg)[1], rows["segment_ids"])
        return {
            **rows,
            "old_logp": logp_BT,
            "old_values": rl_loss.state_values(h_BT) * m_BT,
            "ref_logp": ref_BT,
            "score": score_B,
            "kl": (logp_BT - ref_BT).sum(-1),
        }

    return sample_fn


def with_advantages(out: dict, rl) -> dict:
    """A rollout batch (`rl_loss.ROLLOUT_KEYS`) from `sample_fn`'s output: PPO's KL-shaped
    token rewards and GAE advantages (whitened when `rl.whiten`) and returns, or the
    group-relative advantage of each response's total reward (score - beta * kl)."""
    m_BT = out["loss_mask"].astype(jnp.float32)
    if rl.algo == "ppo":
        kl_BT = out["old_logp"] - out["ref_logp"]
        rewards_BT = rl_loss.token_rewards(out["score"], kl_BT, m_BT, rl.beta)
        adv_BT, returns_BT = rl_loss.gae(rewards_BT, out["old_values"], m_BT, rl.gamma, rl.lam)
        if rl.whiten:
            adv_BT = rl_loss.whiten(adv_BT, m_BT)
    else:
        total_B = out["score"] - rl.beta * out["kl"]
        adv_BT = rl_loss.group_advantages(total_B, rl.group)[:, None] * m_BT
        returns_BT = jnp.zeros_like(adv_BT)
    batch = {k: v for k, v in out.items() if k in rl_loss.ROLLOUT_KEYS}
    return batch | {"advantages": adv_BT, "returns": returns_BT}


def make_rollout_fn(rl, *args) -> Callable:
    """`rollout(params, ref_params, rm_params, prompts_BP, pad_B, key) -> batch`:
    `make_sample_fn(rl, *args)` then `with_advantages`."""
    sample_fn = make_sample_fn(rl, *args)

    def rollout(*inputs) -> dict:
        return with_advantages(sample_fn(*inputs), rl)

    return rollout
