"""The reward model (critic) as a recipe of the one training loop: judged pairs in, the
Bradley-Terry loss, no fork.

Set when the run config has a `reward` block (`REWARD_FIELDS`): the model gets a zero-initialised
scalar head (`score_head`, prefs/heads.py) read at each row's last non-pad token; `init_from`
loads the trunk from a language model (the SFT run in experiments/rlhf.py). Data: the pairs.json
of `reward.pairs` (prefs/pairs.py; the same held-out split by prompt as DPO's, never trained or
evaluated on here), loss and evaluation: prefs/reward_loss.py. `eval/accuracy` is the pairwise
accuracy on `val_percent` of the training prompts, held back from training; later stages read
the checkpoint where it is highest (prefs/critic.py).
"""

import ml_collections

from prefs import reward_loss
from prefs.heads import SCORE_HEAD, WithHead
from prefs.pairs import pairs_source
from train.recipe import Recipe
from train.validate import check_fields

_REWARD = {
    "pairs": ("", {"type": str}),  # the judged pairs.json ('' in a study: its pairs stage)
    "eval_percent": (10, {"type": int, "min": 0, "max": 100}),  # held-out share of pair prompts
    "val_percent": (15, {"type": int, "min": 1, "max": 99}),  # validation share of the others
}
REWARD_FIELDS = {k: spec for k, (_, spec) in _REWARD.items()}


def default_reward_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({k: v for k, (v, _) in _REWARD.items()})


def check_decoder(config, block: str) -> None:
    """The scalar heads read `decoder.hidden`: a decoder trained in full, not pipelined."""
    if config.model.family != "decoder":
        raise ValueError(f"{block}: model.family={config.model.family!r}; use 'decoder'")
    if "adapt" in config and config.adapt.method != "full":
        raise ValueError(f"{block}: adapt.method={config.adapt.method!r}; use 'full'")
    if config.parallel.mesh.stage != 1:
        raise ValueError(f"{block}: parallel.mesh.stage={config.parallel.mesh.stage}; use 1")


def recipe(config) -> Recipe | None:
    """The reward-model recipe when `config` has a `reward` block, else None."""
    if "reward" not in config:
        return None
    check_fields(config.reward, REWARD_FIELDS, "reward.")
    check_decoder(config, "reward")

    def loss(run, apply_fn):
        return reward_loss.make_loss_fn(reward_loss.make_score_fn(run.model.outputs, config.model))

    return Recipe(
        name="reward",
        model=lambda run, model: WithHead(model, SCORE_HEAD),
        loss=loss,
        eval_loss=True,
        data=lambda run, i, n: pairs_source(
            run, i, n, run.config.reward, "reward", False, run.config.reward.val_percent
        ),
        batch_keys=lambda run: dict(reward_loss.REWARD_PAIR_KEYS),
    )
