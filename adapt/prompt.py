"""Prompt tuning (Lester et al. 2021): P learned embeddings prepended to every row, base frozen.

A parameter-and-batch transform, so model code is unchanged: the soft prompt is appended to the
embedding table as P extra rows, each row of the batch gets the P ids of those rows in front, and
the output keeps the real vocabulary's logits of the original positions (the extra rows' logits
of a tied output are dropped, so the softmax is over exactly the base vocabulary).

The prompt belongs to the first document of each row (its segment id; later packed documents do
not see it) and occupies positions 0 .. P-1, shifting that document's positions by P. With
`length` tokens the model needs `max_len >= seq_len + length` for learned positions.

Initialisation (`adapt.prompt.init`): 'vocab' copies the embeddings of `length` token ids drawn
without replacement from the tokenizer's real ids (the paper's sampled-vocabulary init);
'random' draws normal rows with the embedding table's own standard deviation.
"""

import jax
import jax.numpy as jnp
import ml_collections


def default_prompt_config() -> ml_collections.ConfigDict:
    """The `adapt.prompt` block."""
    return ml_collections.ConfigDict({"length": 16, "init": "vocab", "first_id": 4})


def init(rng: jax.Array, params: dict, pcfg, vocab_size: int) -> dict:
    """{'embeds': [P, D]} from the base embedding table `params['embed']`.

    Args:
      rng: key.
      params: unboxed base parameters.
      pcfg: the `adapt.prompt` config.
      vocab_size: ids the tokenizer really uses (vocab init samples from first_id .. vocab_size).
    """
    table_VD = params["embed"]
    P = pcfg.length
    if pcfg.init == "vocab":
        ids = jax.random.choice(
            rng, jnp.arange(pcfg.first_id, vocab_size), (P,), replace=P > vocab_size - pcfg.first_id
        )
        embeds = jnp.take(table_VD, ids, axis=0)
    elif pcfg.init == "random":
        embeds = jax.random.normal(rng, (P, table_VD.shape[1])) * jnp.std(table_VD)
    else:
        raise ValueError(f"adapt.prompt.init={pcfg.init!r} is unknown; use 'vocab' or 'random'")
    return {"embeds": embeds.astype(jnp.float32)}


def prepend(batch: dict, P: int, first_id: int) -> dict:
    """The batch with ids first_id .. first_id+P-1 in front of every row (see module docstring)."""
    tokens_BT = batch["tokens"]
    B, T = tokens_BT.shape
    seg_BT = batch.get("segment_ids", jnp.ones((B, T), jnp.int32))
    pos_BT = batch.get("positions", jnp.broadcast_to(jnp.arange(T), (B, T)))
    prompt_BP = jnp.broadcast_to(first_id + jnp.arange(P, dtype=tokens_BT.dtype), (B, P))
    first_seg_B1 = seg_BT[:, :1]
    shifted_BT = jnp.where(seg_BT == first_seg_B1, pos_BT + P, pos_BT)
    out = dict(batch)
    out["tokens"] = jnp.concatenate([prompt_BP, tokens_BT], axis=1)
    out["segment_ids"] = jnp.concatenate([jnp.broadcast_to(first_seg_B1, (B, P)), seg_BT], 1)
    out["positions"] = jnp.concatenate(
        [jnp.broadcast_to(jnp.arange(P, dtype=pos_BT.dtype), (B, P)), shifted_BT], 1
    )
    for key, fill in (("token_type_ids", 0), ("loss_mask", 0), ("prefix_mask", 1)):
        if key in batch:
            pad_BP = jnp.full((B, P), fill, batch[key].dtype)
            out[key] = jnp.concatenate([pad_BP, batch[key]], axis=1)
    return out


def apply(apply_fn, base: dict, prompt: dict, batch: dict, cfg, *, rngs=None) -> jax.Array:
    """Logits [B, T, V] of a decoder `apply_fn` with the soft prompt in front of each row."""
    table_VD = base["embed"]
    V, P = table_VD.shape[0], prompt["embeds"].shape[0]
    params = dict(base, embed=jnp.concatenate([table_VD, prompt["embeds"].astype(table_VD.dtype)]))
    logits_BTV = apply_fn(params, prepend(batch, P, V), cfg, rngs=rngs)
    return logits_BTV[:, P:, :V]
