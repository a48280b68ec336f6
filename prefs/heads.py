"""A decoder with a scalar head: the reward model's score and the PPO policy's value.

`WithHead(model, name)` keeps the family's `init`/`apply` contract (apply gives the LM's logits,
so sampling, `init_from` and the objective's evaluation work unchanged) and adds the parameters
`{name: {'w' [D] (embed), 'b' []}}`, initialised to zero so the head starts at 0 whatever the
trunk. `outputs(params, batch, cfg)` runs the trunk once and returns the logits and the head's
scalar at every position; `last_index` finds the last non-pad token of each row, where the
reward model reads its score. Decoder family only: the head reads `decoder.hidden`.
"""

import jax
import jax.numpy as jnp

from models import blocks, decoder
from models.layers import param

SCORE_HEAD, VALUE_HEAD = "score_head", "value_head"  # the reward model's, the PPO policy's


class WithHead:
    """`model` plus a zero-initialised scalar head named `name` (module docstring)."""

    def __init__(self, model, name: str):
        self.model, self.name = model, name

    def init(self, rng: jax.Array, cfg) -> dict:
        params = self.model.init(rng, cfg)
        zeros = lambda key, shape, dtype: jnp.zeros(shape, dtype)
        params[self.name] = {
            "w": param(rng, (cfg.d_model,), ("embed",), zeros),
            "b": param(rng, (), (), zeros),
        }
        return params

    def trunk(self, params: dict) -> dict:
        return {k: v for k, v in params.items() if k != self.name}

    def apply(self, params: dict, batch: dict, cfg, *, rngs=None, **kw):
        return self.model.apply(self.trunk(params), batch, cfg, rngs=rngs, **kw)

    def outputs(self, params: dict, batch: dict, cfg, *, rngs=None) -> tuple[jax.Array, jax.Array]:
        """(logits [B, T, V], head scalar [B, T] in f32) from one pass of the trunk."""
        trunk = self.trunk(params)
        x_BTD = decoder.hidden(trunk, batch, cfg, rngs=rngs)
        head = params[self.name]
        h_BT = jnp.einsum("BTD,D->BT", x_BTD.astype(jnp.float32), head["w"].astype(jnp.float32))
        return blocks.unembed(x_BTD, trunk, cfg), h_BT + head["b"].astype(jnp.float32)


def lm_outputs(apply_fn):
    """`outputs` of a model without a head: (apply_fn's logits, zeros [B, T])."""

    def outputs(params, batch: dict, cfg, *, rngs=None):
        zeros_BT = jnp.zeros(batch["tokens"].shape, jnp.float32)
        return apply_fn(params, batch, cfg, rngs=rngs), zeros_BT

    return outputs


def last_index(segment_ids_BT: jax.Array) -> jax.Array:
    """[B] index of each row's last token with a non-zero segment id (0 for an empty row)."""
    T = segment_ids_BT.shape[1]
    at_BT = jnp.where(segment_ids_BT != 0, jnp.arange(T)[None, :], 0)
    return at_BT.max(-1)


def at_last(h_BT: jax.Array, segment_ids_BT: jax.Array) -> jax.Array:
    """[B] the head's value at each row's last non-pad token."""
    return jnp.take_along_axis(h_BT, last_index(segment_ids_BT)[:, None], axis=1)[:, 0]
