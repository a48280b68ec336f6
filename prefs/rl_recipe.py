"""RL from a reward model (PPO, or the group-relative GRPO) as a recipe of the one loop.

Set when the run config has an `rl` block (`RL_FIELDS`). The policy starts from `init_from`
(the SFT run) and, for PPO, gets a zero-initialised value head (`value_head`, prefs/heads.py) on
the shared trunk. Data: the on-policy source of prefs/rl_source.py (rollouts from the current
parameters, scored by the frozen `rl.reference` and `rl.reward_model`); loss: prefs/rl_loss.py,
also on the held-out rollouts; each evaluation also logs the probe (reward-model score, the
graded judge's score, KL to the reference, response length on held-out prompts).
"""

import ml_collections

from prefs import rl_loss, rl_source
from prefs.heads import VALUE_HEAD, WithHead, lm_outputs
from prefs.reward_recipe import check_decoder
from train.recipe import Recipe
from train.validate import check_fields


def _check_group(block) -> None:
    if block.algo == "grpo" and block.group < 2:
        raise ValueError(f"rl.group={block.group}: GRPO compares at least 2 samples; raise it")


def _is_run(field: str):
    def check(block) -> None:
        if not block[field]:
            raise ValueError(f"rl.{field} is empty; pass the workdir of a finished run")

    return check


_RL = {
    "algo": ("ppo", {"choices": ("ppo", "grpo")}),
    "reward_model": ("", {"type": str, "check": _is_run("reward_model")}),  # the critic's run
    "reference": ("", {"type": str, "check": _is_run("reference")}),  # frozen SFT run
    "beta": (0.05, {"type": float, "min": 0.0}),  # per-token KL penalty to the reference
    "clip": (0.2, {"type": float, "above": 0.0}),  # PPO ratio clip epsilon
    "value_clip": (0.2, {"type": float, "above": 0.0}),
    "vf_coef": (0.5, {"type": float, "min": 0.0}),  # weight of the value loss (PPO)
    "gamma": (1.0, {"type": float, "min": 0.0, "max": 1.0}),
    "lam": (0.95, {"type": float, "min": 0.0, "max": 1.0}),  # GAE lambda
    "whiten": (True, {"type": bool}),  # PPO: normalise advantages over the batch
    "group": (4, {"type": int, "min": 1, "check": _check_group}),  # samples per prompt
    "epochs": (2, {"type": int, "min": 1}),  # updates per rollout
    "max_new_tokens": (96, {"type": int, "min": 1}),
    "max_prompt_tokens": (160, {"type": int, "min": 2}),
    "temperature": (0.8, {"type": float, "above": 0.0}),
    "heldout_prompts": (32, {"type": int, "min": 1}),  # validation prompts of the probe
    "heldout_samples": (2, {"type": int, "min": 1}),
}
RL_FIELDS = {k: spec for k, (_, spec) in _RL.items()}


def default_rl_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({k: v for k, (v, _) in _RL.items()})


def _check_shapes(config) -> None:
    rl, B = config.rl, config.data.batch_size
    if B % rl.group:
        raise ValueError(
            f"data.batch_size={B} is not a multiple of rl.group={rl.group}; change either"
        )
    T = rl.max_prompt_tokens + rl.max_new_tokens
    if config.data.seq_len != T:
        raise ValueError(
            f"data.seq_len={config.data.seq_len}: rollout rows hold rl.max_prompt_tokens + "
            f"rl.max_new_tokens = {T} tokens; set data.seq_len={T}"
        )


def recipe(config) -> Recipe | None:
    """The RL recipe when `config` has an `rl` block, else None."""
    if "rl" not in config:
        return None
    check_fields(config.rl, RL_FIELDS, "rl.")
    check_decoder(config, "rl")
    _check_shapes(config)
    rl, keep = config.rl, {}
    ppo = rl.algo == "ppo"

    def loss(run, apply_fn):
        outputs = run.model.outputs if ppo else lm_outputs(apply_fn)
        return rl_loss.make_loss_fn(outputs, config.model, rl)

    return Recipe(
        name=f"rl-{rl.algo}",
        model=(lambda run, model: WithHead(model, VALUE_HEAD)) if ppo else None,
        loss=loss,
        eval_loss=True,
        data=lambda run, i, n: rl_source.data_source(run, i, n, keep),
        batch_keys=lambda run: dict(rl_loss.ROLLOUT_KEYS),
        probe=lambda run, params: keep["rollouts"].evaluate(params, config.seed),
    )
