"""Next-token choice from logits: greedy, temperature, top-k and nucleus (top-p) sampling.

Pure and jittable; the settings are Python numbers fixed at trace time.
"""

import jax
import jax.numpy as jnp

from models.layers import NEG_INF


def filter_logits(logits_BV: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Logits with everything outside the top-k and the top-p nucleus set to NEG_INF.

    Args:
      logits_BV: f32 logits (already divided by the temperature).
      top_k: keep the k largest per row (0: all). Ties at the k-th value are all kept.
      top_p: keep the smallest set of largest-probability tokens whose mass reaches `top_p`
        (1.0: all). The most likely token is always kept.
    """
    logits_BV = logits_BV.astype(jnp.float32)
    V = logits_BV.shape[-1]
    if 0 < top_k < V:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, NEG_INF, logits_BV)
    if top_p < 1.0:
        sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        # mass strictly before each sorted token: a token is kept while that is below top_p
        before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        kept_BV = before_BV < top_p
        cutoff_B1 = jnp.min(jnp.where(kept_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < cutoff_B1, NEG_INF, logits_BV)
    return logits_BV


def sample(
    logits_BV: jax.Array,
    rng: jax.Array | None,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """Next token ids [B] (int32): argmax when `temperature` is 0, else a filtered sample."""
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 is greedy)")
    scaled_BV = logits_BV.astype(jnp.float32) / temperature
    filtered_BV = filter_logits(scaled_BV, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, filtered_BV, axis=-1).astype(jnp.int32)
