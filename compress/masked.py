"""Pruning during training: a sparsity schedule and an optimizer wrapper that keeps masks fixed.

`masked(inner, ...)` wraps any optax optimizer. Its state holds one keep-mask per parameter
(a tree of bools with the parameters' structure, so `optax.tree_map_params` shards it like the
parameters) and a step count. On a pruning step it recomputes the masks by magnitude at the
scheduled sparsity; on every step it zeroes the gradients of pruned weights before the inner
optimizer sees them (Adam's moments for them stay at zero) and replaces their update by `-w`,
so that `w + update` is exactly 0 whatever the inner optimizer (weight decay included) did: a
pruned weight is never revived.

Schedule (Zhu & Gupta 2017): s(t) = s_f (1 - (1 - p)^3), p = (t - start) / (end - start) clipped
to [0, 1], pruning every `every` steps from `start` to `end` (and the masks held after).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from compress.magnitude import apply_masks, magnitude_masks, prunable_spec


class MaskedState(NamedTuple):
    inner: Any
    masks: Any  # bool tree with the structure of the parameters; True = kept
    count: jax.Array  # int32: updates done


def sparsity_schedule(final: float, start: int, end: int):
    """s(t): 0 before `start`, cubic ramp to `final` at `end`, `final` after."""

    def schedule(t):
        p = jnp.clip((t - start) / max(end - start, 1), 0.0, 1.0)
        p = jnp.where(t >= end, 1.0, p)
        return final * (1.0 - (1.0 - p) ** 3)

    return schedule


def masked(
    inner: optax.GradientTransformation,
    prunable,
    final_sparsity: float,
    *,
    start: int = 0,
    end: int = 0,
    every: int = 1,
    scope: str = "global",
) -> optax.GradientTransformationExtraArgs:
    """`inner` with magnitude masks of the `prunable_spec` weights (module docstring), pruning at
    steps start, start + every, ... up to end to reach `final_sparsity` (`compress.recipe` checks
    the `prune` block: 0 <= sparsity < 1, start <= end, every >= 1)."""
    schedule = sparsity_schedule(final_sparsity, start, end)

    def init(params):
        masks = jax.tree.map(lambda p: jnp.ones(p.shape, bool), params)
        return MaskedState(inner.init(params), masks, jnp.zeros((), jnp.int32))

    def update(grads, state, params=None, **extra_args):  # extra_args: the step's lr=
        t = state.count
        prune_now = (t >= start) & (t <= end) & ((t - start) % every == 0)
        masks = jax.lax.cond(
            prune_now,
            lambda: magnitude_masks(params, prunable, schedule(t), scope),
            lambda: state.masks,
        )
        grads = jax.tree.map(lambda g, m: jnp.where(m, g, jnp.zeros((), g.dtype)), grads, masks)
        updates, inner_state = inner.update(grads, state.inner, params, **extra_args)
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), updates, params, masks)
        return updates, MaskedState(inner_state, masks, t + 1)

    return optax.GradientTransformationExtraArgs(init, update)


def prune_initial(run, state, config):
    """`state` with the masks of step 0 applied to its parameters (the `init` hook), so that the
    first forward pass of a pruned fine-tune (`prune.start = end = 0`) already runs the pruned model
    (the optimizer zeroes the same weights only at its first update)."""
    from compress import prune_end

    p = config.prune
    sparsity = float(sparsity_schedule(p.sparsity, p.start, prune_end(config))(0))
    if p.start or not sparsity:
        return state
    prunable = prunable_spec(run.model, config.model)
    prune = jax.jit(
        lambda params: apply_masks(params, magnitude_masks(params, prunable, sparsity, p.scope)),
        out_shardings=run.state_shardings.params,
    )
    with run.activate():
        return state.replace(params=prune(state.params))
