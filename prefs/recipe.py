"""DPO as a recipe of the one training loop (train/recipe.py): pairs in, the DPO loss, no fork;
and the dispatch to the reward-model and RL recipes (prefs/reward_recipe.py, prefs/rl_recipe.py).

Set when the run config has a `dpo` block (declared once in `DPO_FIELDS`, checked when the
recipe is composed): data from prefs/pairs.py, the pair batch keys and prefs/loss.py's DPO loss,
also on the held-out pairs. The policy starts from `init_from` (the SFT run); the reference's
log-probs come precomputed in the pairs, so no reference is on device during training.
"""

import ml_collections

from prefs import loss as dpo_loss
from prefs import reward_recipe, rl_recipe
from prefs.pairs import data_source
from train.recipe import Recipe
from train.validate import check_fields

# Every `dpo` field: (default, declared type and range).
_DPO = {
    "beta": (0.1, {"type": float, "above": 0.0}),  # the KL weight of the implicit reward
    "pairs": ("", {"type": str}),  # the pairs.json a run trains on ('' in a study: sample new)
    "eval_percent": (10, {"type": int, "min": 0, "max": 100}),  # held-out share of pair prompts
    "prompts": (128, {"type": int, "min": 1}),  # train-split prompts sampled for pairs
    "samples": (8, {"type": int, "min": 2}),  # completions per pair prompt
    "heldout_prompts": (128, {"type": int, "min": 1}),  # validation-split prompts compared
    "heldout_samples": (4, {"type": int, "min": 1}),  # completions per held-out prompt and model
    "max_new_tokens": (160, {"type": int, "min": 1}),
    "max_prompt_tokens": (192, {"type": int, "min": 2}),  # longer prompts are left out
    "temperature": (0.8, {"type": float, "min": 0.0}),
    "top_k": (0, {"type": int, "min": 0}),  # 0: all tokens
    "top_p": (1.0, {"type": float, "above": 0.0, "max": 1.0}),
    "gen_batch": (128, {"type": int, "min": 1}),  # rows per sampling call
    "seed": (0, {"type": int, "min": 0}),  # prompt subset and sampling keys
}
DPO_FIELDS = {k: spec for k, (_, spec) in _DPO.items()}


def default_dpo_config() -> ml_collections.ConfigDict:
    """The `dpo` block with its defaults (experiments/dpo.py sets them from its arguments)."""
    return ml_collections.ConfigDict({k: v for k, (v, _) in _DPO.items()})


def recipe(config) -> Recipe | None:
    """The preference recipe `config` asks for: DPO (a `dpo` block), the reward model (a `reward`
    block, prefs/reward_recipe.py) or RL against it (an `rl` block, prefs/rl_recipe.py); None
    without any; ConfigError on a bad field."""
    blocks = [b for b in ("dpo", "reward", "rl") if b in config]
    if len(blocks) > 1:
        raise ValueError(f"a run config has one of the blocks dpo, reward, rl; found {blocks}")
    if "reward" in config:
        return reward_recipe.recipe(config)
    if "rl" in config:
        return rl_recipe.recipe(config)
    if "dpo" not in config:
        return None
    check_fields(config.dpo, DPO_FIELDS, "dpo.")
    beta = config.dpo.beta
    return Recipe(
        name="dpo",
        loss=lambda run, apply_fn: dpo_loss.make_loss_fn(run.config.model, apply_fn, beta=beta),
        eval_loss=True,
        data=data_source,
        batch_keys=lambda run: dict(dpo_loss.PAIR_KEYS),
    )
