"""Distillation on the one training loop: the teacher is a frozen input of the student's step.

A run config with a `distill` block (experiments/distill.py) and `distill.alpha > 0` trains its
model by distill/loss.py's loss (alpha tau^2 KL(teacher || student) + (1 - alpha) CE) instead of
the objective's. The teacher is a finished run's workdir (`distill.teacher`): its model config
comes from its config.json, its parameters from its newest checkpoint, placed with the shardings
its own logical axes give under the student's rules on the student's mesh and passed to every
step as an argument (never donated, never differentiated, train/recipe.py). The teacher is not
part of the train state, so checkpoints hold the student alone and a resumed run reloads the
teacher from its directory; everything else (resume, preemption, the NaN policy, multi-host
data, asynchronous metrics) is the core loop's.

`distill.alpha = 0` is the control: no recipe, the objective's cross-entropy on the same
batches. The held-out evaluation is the objective's cross-entropy in both cases.
"""

import os

import flax.linen as nn
import jax
import ml_collections

from train.recipe import Recipe
from train.validate import check_fields

# Type and range of every `distill` field.
DISTILL_FIELDS = {
    "teacher": {"type": str},
    "alpha": {"type": float, "min": 0.0, "max": 1.0},
    "temperature": {"type": float, "above": 0.0},
}


def default_distill_config() -> ml_collections.ConfigDict:
    """The `distill` block of a run config (an experiment adds it; base configs do not)."""
    return ml_collections.ConfigDict(
        {
            "teacher": "",  # a finished run's workdir (same tokenizer and vocabulary)
            "alpha": 0.5,  # weight of the KL term (0: plain cross-entropy, the control)
            "temperature": 2.0,  # tau, softening both distributions in the KL term
        }
    )


def _teacher_config(config):
    """The teacher run's model config, checked against the student's (one-line errors)."""
    from train.loop import read_run_config

    teacher = config.distill.teacher
    if not os.path.isfile(os.path.join(teacher, "config.json")):
        raise ValueError(
            f"distill.teacher={teacher!r} holds no config.json; pass the workdir of a finished "
            "run (distill.alpha=0 trains the control without a teacher)"
        )
    if not os.path.isdir(os.path.join(teacher, "checkpoints")):
        raise ValueError(f"distill.teacher={teacher!r} holds no checkpoints; train it first")
    if config.objective != "causal_lm":
        raise ValueError(f"objective={config.objective!r}: distillation trains causal_lm only")
    teacher_cfg = read_run_config(teacher).model
    if teacher_cfg.vocab_size != config.model.vocab_size:
        raise ValueError(
            f"distill.teacher's model.vocab_size={teacher_cfg.vocab_size} != the student's "
            f"{config.model.vocab_size}; distillation needs the same tokenizer and vocabulary"
        )
    return teacher_cfg


def _teacher_params(run, teacher_dir: str, teacher_cfg):
    """The teacher's parameters placed with its logical shardings under `run.rules` on
    `run.mesh`."""
    from models import get_model
    from parallel.sharding import named_shardings
    from train.checkpoint import load_params

    model = get_model(teacher_cfg.family)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), teacher_cfg))
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), run.rules)
    return jax.device_put(load_params(teacher_dir), named_shardings(specs, run.mesh))


def recipe(config) -> Recipe | None:
    """The distillation loss and the teacher as frozen input (train/recipe.py); None without a
    `distill` block or with `distill.alpha = 0`.

    Raises:
      ConfigError: a `distill` field has the wrong type or range.
      ValueError: `distill.teacher` is not a finished run with the student's vocabulary.
    """
    if "distill" not in config:
        return None
    d = config.distill
    check_fields(d, DISTILL_FIELDS, "distill.")
    if d.alpha == 0:
        return None
    teacher_cfg = _teacher_config(config)

    def loss(run, apply_fn):
        from distill.loss import make_loss_fn
        from models import get_model

        return make_loss_fn(
            config.model,
            apply_fn,
            teacher_apply=get_model(teacher_cfg.family).apply,
            teacher_cfg=teacher_cfg,
            alpha=d.alpha,
            temperature=d.temperature,
            bytes_per_token=run.tokenizer.bytes_per_token,
        )

    return Recipe(
        name="distill",
        loss=loss,
        frozen=lambda run: _teacher_params(run, d.teacher, teacher_cfg),
    )
