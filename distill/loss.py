"""Knowledge distillation (Hinton et al. 2015): match a frozen teacher's softened next-token
distribution as well as the data.

Per counted target position (the causal-LM mask: same segment, not padding):
  loss = alpha * tau^2 * KL(softmax(z_t / tau) || softmax(z_s / tau)) + (1 - alpha) * CE(z_s, y)
averaged over counted targets. The tau^2 keeps the soft term's gradient scale independent of the
temperature. `aux` carries the student's plain cross-entropy sums (`nll_sum`, `tokens`, `bytes`,
as objectives/causal_lm.py), so the logged train loss compares with undistilled runs, plus
`kl_sum`.

The teacher's parameters are the loss's fourth argument, not a closed-over constant: the run
passes them into its jitted step as a frozen input (train/recipe.py; distill/recipe.py restores
them), sharded by the teacher's own logical axes, and never differentiates them.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from objectives.causal_lm import next_token_targets, token_nll


def make_loss_fn(
    cfg,
    apply_fn: Callable,
    *,
    teacher_apply: Callable,
    teacher_cfg,
    alpha: float = 0.5,
    temperature: float = 2.0,
    bytes_per_token: np.ndarray | None = None,
) -> Callable:
    """Builds `loss_fn(params, batch, rng, teacher_params) -> (loss, aux)` for a student distilled
    from a teacher.

    Args:
      cfg: the student's model config.
      apply_fn: the student's `apply(params, batch, cfg, rngs=...) -> logits [B, T, V]`.
      teacher_apply: the teacher's `apply`.
      teacher_cfg: the teacher's model config (same vocabulary as the student).
      alpha: weight of the distillation term (0: plain cross-entropy).
      temperature: tau, softening both distributions in the KL term.
      bytes_per_token: as in objectives/causal_lm.py.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"distill.alpha={alpha} must be in [0, 1]")
    if temperature <= 0:
        raise ValueError(f"distill.temperature={temperature} must be positive")
    if teacher_cfg.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"teacher model.vocab_size={teacher_cfg.vocab_size} != student's {cfg.vocab_size}; "
            "distillation needs the same tokenizer and vocabulary"
        )
    if bytes_per_token is None:
        table_V = jnp.ones((cfg.vocab_size,), jnp.float32)
    else:
        table = np.zeros((cfg.vocab_size,), np.float32)
        n = min(len(bytes_per_token), cfg.vocab_size)
        table[:n] = bytes_per_token[:n]
        table_V = jnp.asarray(table)
    tau = float(temperature)

    def loss_fn(params, batch: dict, rng: jax.Array | None, teacher_params):
        logits_BTV = apply_fn(params, batch, cfg, rngs=rng)[:, :-1].astype(jnp.float32)
        targets_BT, mask_BT = next_token_targets(batch)
        nll_BT = token_nll(logits_BTV, targets_BT) * mask_BT
        tokens = mask_BT.sum()
        if alpha > 0:
            teacher_BTV = teacher_apply(jax.lax.stop_gradient(teacher_params), batch, teacher_cfg)
            teacher_BTV = jax.lax.stop_gradient(teacher_BTV[:, :-1].astype(jnp.float32))
            log_p_t = jax.nn.log_softmax(teacher_BTV / tau, axis=-1)
            log_p_s = jax.nn.log_softmax(logits_BTV / tau, axis=-1)
            kl_BT = (jnp.exp(log_p_t) * (log_p_t - log_p_s)).sum(-1) * mask_BT
        else:
            kl_BT = jnp.zeros_like(nll_BT)
        per_token_BT = alpha * tau**2 * kl_BT + (1.0 - alpha) * nll_BT
        aux = {
            "nll_sum": nll_BT.sum(),
            "tokens": tokens,
            "bytes": (jnp.take(table_V, targets_BT) * mask_BT).sum(),
            "kl_sum": kl_BT.sum(),
        }
        return per_token_BT.sum() / jnp.maximum(tokens, 1.0), aux

    return loss_fn
