"""DPO as a recipe of the one training loop (train/recipe.py): pairs in, the DPO loss, no fork.

`recipe(config)` is set when the run config has a `dpo` block (declared once in `DPO_FIELDS` and
checked when the recipe is composed). It gives the loop
  data        prefs/pairs.py: this process's checkpointable iterator over the training pairs of
              `dpo.pairs` and its blocks of the held-out pairs
  batch_keys  the pair keys (prefs/loss.py: PAIR_KEYS; the reference log-probs are rank 1)
  loss        prefs/loss.py's DPO loss, also on the held-out pairs (`eval_loss`); its aux sums
              give train/ and eval/ loss, accuracy, margin and reward_margin per pair
The policy starts from `init_from` (the SFT run, through the `adapt` recipe); the reference's
log-probs come precomputed in the pairs, so no reference is on device during training.
"""

import ml_collections

from prefs import loss as dpo_loss
from prefs.pairs import data_source
from train.recipe import Recipe
from train.validate import check_fields

DPO_FIELDS = {
    "beta": {"type": float, "above": 0.0},  # the KL weight of the implicit reward
    "pairs": {"type": str},  # the pairs.json a run trains on ('' in a study: sample new ones)
    "eval_percent": {"type": int, "min": 0, "max": 100},  # held-out share of the pair prompts
    "prompts": {"type": int, "min": 1},  # train-split prompts sampled for pairs
    "samples": {"type": int, "min": 2},  # completions per pair prompt
    "heldout_prompts": {"type": int, "min": 1},  # validation-split prompts of the comparison
    "heldout_samples": {"type": int, "min": 1},  # completions per held-out prompt and model
    "max_new_tokens": {"type": int, "min": 1},
    "max_prompt_tokens": {"type": int, "min": 2},  # longer prompts are left out
    "temperature": {"type": float, "min": 0.0},
    "top_k": {"type": int, "min": 0},  # 0: all tokens
    "top_p": {"type": float, "above": 0.0, "max": 1.0},
    "gen_batch": {"type": int, "min": 1},  # rows per sampling call
    "seed": {"type": int, "min": 0},  # prompt subset and sampling keys
}


def default_dpo_config() -> ml_collections.ConfigDict:
    """The `dpo` block with its defaults (experiments/dpo.py sets them from its arguments)."""
    return ml_collections.ConfigDict(
        {
            "beta": 0.1,
            "pairs": "",
            "eval_percent": 10,
            "prompts": 128,
            "samples": 8,
            "heldout_prompts": 128,
            "heldout_samples": 4,
            "max_new_tokens": 160,
            "max_prompt_tokens": 192,
            "temperature": 0.8,
            "top_k": 0,
            "top_p": 1.0,
            "gen_batch": 128,
            "seed": 0,
        }
    )


def recipe(config) -> Recipe | None:
    """The DPO recipe when `config` has a `dpo` block (module docstring), else None.

    Raises:
      ConfigError: a field of the `dpo` block is missing, unknown or out of range.
    """
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
