"""Optimizer and learning-rate schedules: AdamW with global-norm clipping.

A schedule is six numbers (`schedule_args`) and one jittable function of the step and them
(`lr_at`). The train step takes the numbers as a runtime argument and passes the step's learning
rate to the optimizer (`opt.update(..., lr=lr_t)`), so nothing about the schedule is compiled in:
every run of a model size, whatever its schedule and length, shares one compiled step.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

SCHEDULES = ("cosine", "wsd", "constant")
DECAY_SHAPES = ("linear", "1-sqrt")
NAN_POLICIES = ("skip", "stop")

# Type, range and allowed values of every `train` field (the keys: models/sizes.py MODEL_FIELDS;
# a bound naming a field, "steps", is that field's value).
TRAIN_FIELDS = {
    "steps": {"type": int, "min": 1},
    "lr": {"type": float, "above": 0.0},
    "warmup_steps": {"type": int, "min": 0, "max": "steps"},
    "schedule": {"choices": SCHEDULES},
    "min_lr_ratio": {"type": float, "min": 0.0, "max": 1.0},
    "decay_fraction": {"type": float, "min": 0.0, "max": 1.0},
    "decay_shape": {"choices": DECAY_SHAPES},
    "decay_start": {"type": int, "min": -1, "max": "steps"},
    "weight_decay": {"type": float, "min": 0.0},
    "b1": {"type": float, "min": 0.0, "below": 1.0},
    "b2": {"type": float, "min": 0.0, "below": 1.0},
    "eps": {"type": float, "above": 0.0},
    "clip_norm": {"type": float},  # <= 0 disables clipping
    "grad_accum": {"type": int, "min": 1},
    "eval_every": {"type": int, "min": 1},
    "eval_batches": {"type": int, "min": 0},
    "ckpt_every": {"type": int, "min": 0},
    "keep_ckpts": {"type": int, "min": 1},
    "log_every": {"type": int, "min": 1},
    "peak_flops": {"type": float, "min": 0.0},
    "nan_policy": {"choices": NAN_POLICIES},
    "max_nonfinite": {"type": int, "min": 1},
    "debug_poison_step": {"type": int, "min": 0},
}


def default_train_config() -> ml_collections.ConfigDict:
    """Optimizer and loop defaults, the `train` block of every experiment config.

    Returns:
      A ConfigDict; see `make_schedule` and `make_optimizer` for the optimizer fields.
    """
    return ml_collections.ConfigDict(
        dict(
            steps=1000,
            lr=3e-3,
            warmup_steps=100,
            schedule="cosine",
            min_lr_ratio=0.1,
            decay_fraction=0.2,  # wsd: cooldown length as a fraction of `steps`.
            decay_shape="linear",  # wsd: 'linear' or '1-sqrt'.
            decay_start=-1,  # wsd: first cooldown step; -1 means steps * (1 - decay_fraction).
            weight_decay=0.1,
            b1=0.9,
            b2=0.95,
            eps=1e-8,
            clip_norm=1.0,  # <= 0 disables clipping.
            grad_accum=1,
            eval_every=200,
            eval_batches=20,
            ckpt_every=500,
            keep_ckpts=2,
            log_every=10,
            peak_flops=0.0,  # Per-device peak FLOP/s for MFU; 0 means measure.
            # A non-finite loss or gradient norm never reaches the parameters: the update is
            # skipped in the step (no host sync). 'stop' then ends the run naming the step, the
            # metric and the last good checkpoint (exit 3); 'skip' counts it and goes on.
            nan_policy="stop",
            max_nonfinite=10,  # 'skip': stop anyway after this many skipped updates.
            debug_poison_step=0,  # Tests: > 0 makes that step's loss and gradients NaN.
        )
    )


def wsd_decay_start(train_cfg: ml_collections.ConfigDict) -> int:
    """First step of the WSD cooldown, resolving the `decay_start=-1` default.

    Args:
      train_cfg: The `train` config block.

    Returns:
      The step at which the learning rate starts to fall from `lr`.
    """
    if train_cfg.decay_start >= 0:
        return int(train_cfg.decay_start)
    return int(round(train_cfg.steps * (1.0 - train_cfg.decay_fraction)))


# The schedule's kind as a number, so that every kind runs the same compiled program.
_KINDS = {("constant", None): 0, ("cosine", None): 1, ("wsd", "linear"): 2, ("wsd", "1-sqrt"): 3}
SCHEDULE_ARGS = ("peak", "floor", "warmup", "decay_start", "steps", "kind")


def schedule_args(train_cfg: ml_collections.ConfigDict) -> np.ndarray:
    """The learning-rate schedule as numbers, `f32[6]` in `SCHEDULE_ARGS` order (see `lr_at`).

    The train step takes them as a runtime argument instead of compiling them in, so runs that
    differ only in their schedule (a sweep's WSD branches and their constant-LR trunk, a cosine
    run per token budget) share one compiled step and the compilation cache serves all of them.

    All schedules warm up linearly from 0 at step 0 to `lr` at `warmup_steps`, then:
    'cosine' decays to `lr * min_lr_ratio` at `steps`; 'constant' stays at `lr`; 'wsd'
    (warmup-stable-decay, Hägele et al. 2024) stays at `lr` until `decay_start` and cools down to
    `lr * min_lr_ratio` at `steps` with `decay_shape` 'linear' (1 - p) or '1-sqrt' (1 - sqrt(p)),
    p being the cooldown progress in [0, 1]. Past `steps` every schedule holds its final value.

    Args:
      train_cfg: The `train` config block (`default_train_config()` fields).

    Raises:
      ValueError: On an unknown schedule or decay shape, or a cooldown outside the run.
    """
    name = train_cfg.schedule
    if name not in SCHEDULES:
        raise ValueError(f"train.schedule={name!r} is not one of {SCHEDULES}.")
    warmup, steps = int(train_cfg.warmup_steps), int(train_cfg.steps)
    shape = None
    start = warmup
    if name == "wsd":
        shape = train_cfg.decay_shape
        if shape not in DECAY_SHAPES:
            raise ValueError(f"train.decay_shape={shape!r} is not one of {DECAY_SHAPES}.")
        start = wsd_decay_start(train_cfg)
        if not warmup <= start <= steps:
            raise ValueError(
                f"WSD cooldown starts at step {start} (train.decay_start/decay_fraction), outside "
                f"[warmup_steps={warmup}, steps={steps}]."
            )
    peak = float(train_cfg.lr)
    floor = float(train_cfg.lr * train_cfg.min_lr_ratio)
    kind = _KINDS[name, shape]
    return np.asarray([peak, floor, warmup, start, steps, kind], np.float32)


def lr_at(step: jax.Array | int, args: jax.Array) -> jax.Array:
    """The learning rate at optimizer step `step` of the schedule `args` (`schedule_args`)."""
    peak, floor, warmup, start, steps, kind = (args[i] for i in range(len(SCHEDULE_ARGS)))
    step = jnp.asarray(step, jnp.float32)
    # max(1, .) keeps a zero-length decay (start == steps) from dividing by zero.
    progress = jnp.clip((step - start) / jnp.maximum(1.0, steps - start), 0.0, 1.0)
    frac = jnp.select(
        [kind == 1, kind == 2],
        [0.5 * (1.0 + jnp.cos(jnp.pi * progress)), 1.0 - progress],
        1.0 - jnp.sqrt(progress),
    )
    after_warmup = jnp.where(kind == 0, peak, floor + (peak - floor) * frac)
    return jnp.where(step < warmup, peak * step / jnp.maximum(warmup, 1.0), after_warmup)


def make_schedule(train_cfg: ml_collections.ConfigDict) -> optax.Schedule:
    """The learning-rate schedule `step -> lr` of `train_cfg` (`schedule_args` has the rules).

    Raises:
      ValueError: On an unknown schedule or decay shape, or a cooldown outside the run.
    """
    args = schedule_args(train_cfg)  # Read now: a later edit of the config must not change lr.
    return lambda step: lr_at(step, args)


def scale_by_lr() -> optax.GradientTransformationExtraArgs:
    """Multiplies the update by the `lr=` extra argument of `update` (stateless).

    Any optimizer of `make_optimizer` takes the step's learning rate this way, `opt.update(grads,
    opt_state, params, lr=lr_t)`, rather than from a schedule compiled into it.
    """

    def update_fn(updates, state, params=None, *, lr):
        del params
        return jax.tree.map(lambda u: u * jnp.asarray(lr, u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda _: optax.EmptyState(), update_fn)


def decay_mask(params: Any, stacked_keys: tuple[str, ...] = ("layers",)) -> Any:
    """Weight-decay mask: True for matrices (kernels, embedding tables), False for vectors.

    Norm scales and biases are left undecayed: shrinking them towards zero fights the
    normalisation rather than regularising the function. The test is on the per-layer rank:
    parameters under a `stacked_keys` subtree carry a leading `layers` axis (DESIGN.md), so a
    stacked norm scale `[L, D]` counts as a vector, not a matrix.

    Args:
      params: A pytree of arrays or `jax.ShapeDtypeStruct`s (nested dicts).
      stacked_keys: Dict keys whose subtrees are stacked along a leading layer axis.

    Returns:
      A pytree of Python bools with the structure of `params`.
    """

    def is_matrix(path: tuple[Any, ...], p: Any) -> bool:
        stacked = sum(getattr(k, "key", None) in stacked_keys for k in path)
        return len(p.shape) - stacked >= 2

    return jax.tree_util.tree_map_with_path(is_matrix, params)


def make_optimizer(
    train_cfg: ml_collections.ConfigDict, model_cfg: ml_collections.ConfigDict | None = None
) -> optax.GradientTransformation:
    """AdamW with decoupled, masked weight decay and optional global-norm clipping.

    The update is `-lr_t * (adam_direction + weight_decay * param)` (optax's `adamw`, like PyTorch's
    AdamW), so the effective per-step decay is `lr_t * weight_decay`, and it follows the schedule.
    `lr_t` is not compiled in: every `update` call passes it, `opt.update(grads, opt_state, params,
    lr=lr_at(step, schedule_args(train_cfg)))` (`train/step.py` does).
    Clipping applies to the raw gradient before Adam's moments see it. With
    `model_cfg.mup.enabled` the parameter groups get muP's LR multipliers (1/m for hidden
    weights, `models/mup.py`) and epsilon is scaled by 1/m.

    Args:
      train_cfg: The `train` config block (`default_train_config()` fields).
      model_cfg: The `model` config block; only read for muP (None: standard parametrization).

    Returns:
      An optax transformation whose `update` needs `lr=`; its state holds no hyperparameters.
    """
    from models import mup  # models/ does not import train/, so no cycle

    mup_on = model_cfg is not None and mup.enabled(model_cfg)
    adamw = optax.adamw(
        1.0,  # then times the step's lr (scale_by_lr): -(adam + wd * w) * lr_t, as optax's own
        b1=train_cfg.b1,
        b2=train_cfg.b2,
        eps=mup.adam_eps(train_cfg.eps, model_cfg) if mup_on else train_cfg.eps,
        weight_decay=train_cfg.weight_decay,
        mask=decay_mask,
    )
    parts = [adamw, scale_by_lr()]
    if train_cfg.clip_norm > 0:
        parts.insert(0, optax.clip_by_global_norm(train_cfg.clip_norm))
    if mup_on:
        parts.append(lr_multipliers(lambda params: mup.lr_multipliers(params, model_cfg)))
    return optax.chain(*parts)


def lr_multipliers(multipliers_fn) -> optax.GradientTransformation:
    """Multiplies each parameter's update by a constant from `multipliers_fn(params)` (stateless).

    Args:
      multipliers_fn: params -> a tree of Python floats with the structure of params.
    """

    def update_fn(updates, state, params=None):
        del params  # the updates have the parameters' structure and names
        mults = multipliers_fn(updates)
        return jax.tree.map(lambda u, k: u * jnp.asarray(k, u.dtype), updates, mults), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)
