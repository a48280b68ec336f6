"""The jitted train and eval steps: `(state, batch, schedule) -> (state, metrics)`, one update each.

`schedule` is `train.optim.schedule_args(config.train)`, six numbers passed at run time: the step
computes its learning rate from them (`lr_at`) and hands it to the optimizer, so two runs that
differ only in schedule or length run the same compiled program (one compile for a sweep's
trunk and all its branches, served by the persistent compilation cache).

Gradient accumulation is a `lax.scan` over microbatches inside the step. Gradients are accumulated
as sums of per-token NLL gradients and divided by the total token count, so k microbatches give
exactly the update of one batch of k x b (the loss is a token mean, not a mean of means).

Numerical faults: when the loss or the gradient norm is not finite, the step keeps the old
parameters and optimizer state (a `jnp.where`, so the device never waits for the host) and counts
the skip in `state.nonfinite`; the loop reads that counter with the metrics it fetches anyway and
applies `train.nan_policy`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from train.optim import lr_at
from train.state import TrainState


def _split_microbatches(batch: dict, k: int) -> dict:
    """[B, ...] -> [k, B / k, ...], microbatch j taking rows j, j + k, ...: with B split into
    contiguous blocks over devices, every device keeps its own rows (no resharding)."""
    return jax.tree.map(lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)


def make_train_step(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    grad_accum: int = 1,
    poison_step: int = 0,
    *,
    frozen: bool = False,
) -> Callable:
    """Builds `train_step(state, batch, schedule[, frozen]) -> (state, metrics)` (pure; jit it
    with shardings).

    Args:
      loss_fn: `loss_fn(params, batch, rng) -> (loss, aux)`; aux holds sums: `nll_sum`, `tokens`,
        `bytes` and any others (each summed over microbatches and returned in the metrics).
      optimizer: a `train.optim.make_optimizer` transformation (its `update` takes `lr=`); the
        step's `schedule` argument is `train.optim.schedule_args(...)`, f32[6].
      grad_accum: microbatches per step.
      poison_step: test hook (`train.debug_poison_step`): > 0 makes the loss and gradients of that
        step NaN, as a bad batch would.
      frozen: the step takes a fourth argument, a tree of inputs that are not trained (a
        teacher's parameters), passed to `loss_fn(params, batch, rng, frozen)`.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro_step(params, batch, rng, *extra):
        (loss, aux), grads = grad_fn(params, batch, rng, *extra)
        # grads of the token-mean loss times the token count = grads of the NLL sum.
        grads = jax.tree.map(lambda g: g * aux["tokens"], grads)
        return grads, aux

    def train_step(state: TrainState, batch: dict, schedule: jax.Array, *extra):
        if len(extra) != int(frozen):
            raise TypeError(f"train_step takes {3 + frozen} arguments (frozen={frozen})")
        key = jax.random.wrap_key_data(state.rng)
        key, step_key = jax.random.split(key)
        if grad_accum == 1:
            grads, aux = micro_step(state.params, batch, step_key, *extra)
        else:
            micro = _split_microbatches(batch, grad_accum)
            keys = jax.random.split(step_key, grad_accum)
            step = lambda b, k: micro_step(state.params, b, k, *extra)
            zeros = jax.tree.map(
                lambda s: jnp.zeros(s.shape, s.dtype),
                jax.eval_shape(step, jax.tree.map(lambda x: x[0], micro), keys[0]),
            )

            def body(acc, xs):
                return jax.tree.map(jnp.add, acc, step(*xs)), None

            (grads, aux), _ = jax.lax.scan(body, zeros, (micro, keys))
        tokens = jnp.maximum(aux["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / tokens, grads)
        nll_sum = aux["nll_sum"]
        if poison_step > 0:
            poison = jnp.where(state.step + 1 == poison_step, jnp.nan, 1.0)
            grads, nll_sum = jax.tree.map(lambda g: g * poison, grads), nll_sum * poison
        loss, grad_norm = nll_sum / tokens, optax.global_norm(grads)
        lr = lr_at(state.step, schedule)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, lr=lr)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)
        cause = jnp.where(jnp.isfinite(loss), 2, 1)
        skipped = jnp.stack([state.nonfinite[0] + 1, state.step + 1, cause]).astype(jnp.int32)
        metrics = {
            **aux,
            "loss": loss,
            "nll_sum": nll_sum,
            "grad_norm": grad_norm,
            "lr": lr,
            "nonfinite": keep(state.nonfinite, skipped),
        }
        new_state = state.replace(
            step=state.step + 1,
            params=jax.tree.map(keep, params, state.params),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
            rng=jax.random.key_data(key),
            nonfinite=metrics["nonfinite"],
        )
        return new_state, metrics

    return train_step


def make_eval_step(loss_fn: Callable, microbatches: int = 1) -> Callable:
    """Builds `eval_step(params, batch) -> aux sums` (nll_sum, tokens, bytes, ...).

    `microbatches` > 1 evaluates the batch in that many pieces (a `lax.map`, rows split as the
    train step splits them) and sums their aux: a batch that trains as `train.grad_accum`
    microbatches is evaluated in the same pieces, so it fits in HBM whenever training does.
    """

    def eval_step(params, batch: dict):
        if microbatches == 1:
            return loss_fn(params, batch, None)[1]
        micro = _split_microbatches(batch, microbatches)
        aux_M = jax.lax.map(lambda b: loss_fn(params, b, None)[1], micro)
        return jax.tree.map(lambda x: x.sum(0), aux_M)

    return eval_step
