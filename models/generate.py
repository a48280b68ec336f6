"""Batched generation with a KV cache for decoder and encoder-decoder models.

`generate(params, prompts, cfg, settings)` takes prompts of different lengths and returns one
completion per prompt. Padding: decoder prompts are LEFT-padded (every row then writes the cache at
the same slot; positions are counted from each row's first real token, so a row's tokens are those
it gets alone); encoder-decoder inputs are RIGHT-padded with segment id 0 (the encoder masks by
segment) and every decoder starts from the start id 0. The whole loop (prompt prefill, then one
cached step per new token, sampling inside) is one jitted `lax.scan`.

Rows that emit a stop id keep running (the batch is one array) but emit `pad_id` from then on;
`generate` returns each completion up to and including its stop id.
"""

import dataclasses
import json
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from models import kv_cache, sampling


@dataclasses.dataclass(frozen=True)
class SampleSettings:
    """How to choose tokens; see `models/sampling.py` (temperature 0 is greedy)."""

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = ()
    pad_id: int = 0


def pad_prompts(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, *, side: str = "left", length: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [B, P] int32, pad or length [B]) for prompts padded to the longest on `side`.

    Returns padding counts for `side='left'`, lengths for `side='right'`. `length` > 0 pads to
    that many tokens instead (one compiled shape for batches of different longest prompts).
    """
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token")
    P = max(max(len(p) for p in prompts), length)
    tokens_BP = np.full((len(prompts), P), pad_id, np.int32)
    for b, p in enumerate(prompts):
        if side == "left":
            tokens_BP[b, P - len(p) :] = p
        else:
            tokens_BP[b, : len(p)] = p
    lengths_B = np.array([len(p) for p in prompts], np.int32)
    return tokens_BP, (P - lengths_B if side == "left" else lengths_B)


def _sample_loop(step_fn, cache, logits_BV, rng, s: SampleSettings):
    """Samples `s.max_new_tokens` tokens [B, N], feeding each back through `step_fn`."""
    stop_S = jnp.asarray(s.stop_ids or (-1,), jnp.int32)

    def body(carry, key):
        cache, logits_BV, done_B = carry
        tok_B = sampling.sample(
            logits_BV, key, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p
        )
        tok_B = jnp.where(done_B, s.pad_id, tok_B)
        done_B = done_B | (tok_B[:, None] == stop_S[None, :]).any(-1)
        logits_BV, cache = step_fn(tok_B, cache)
        return (cache, logits_BV, done_B), tok_B

    keys = jax.random.split(rng, s.max_new_tokens)
    done_B = jnp.zeros(logits_BV.shape[:1], bool)
    _, tokens_NB = jax.lax.scan(body, (cache, logits_BV, done_B), keys)
    return tokens_NB.T


def _decoder_fn(cfg, s: SampleSettings):
    def run(params, tokens_BP, pad_B, rng):
        B, P = tokens_BP.shape
        cache = kv_cache.init_cache(cfg, B, P + s.max_new_tokens, pad_B)
        logits_BTV, cache = kv_cache.decoder_step(params, tokens_BP, cache, cfg)

        def step(tok_B, cache):
            logits_B1V, cache = kv_cache.decoder_step(params, tok_B[:, None], cache, cfg)
            return logits_B1V[:, 0], cache

        return _sample_loop(step, cache, logits_BTV[:, -1], rng, s)

    return run


def decoder_sampler(cfg, settings: SampleSettings):
    """The un-jitted decoder sampler `run(params, tokens_BP, pad_B, rng) -> tokens [B, N]`
    (left-padded prompts, `pad_B` padding slots each), to trace inside a larger jitted program
    (RL rollouts: prefs/rollout.py)."""
    return _decoder_fn(cfg, settings)


def _encdec_fn(cfg, s: SampleSettings):
    def run(params, inputs_BS, lengths_B, rng):
        B, S = inputs_BS.shape
        seg_BS = (jnp.arange(S)[None, :] < lengths_B[:, None]).astype(jnp.int32)
        batch = {"inputs": inputs_BS, "inputs_segment_ids": seg_BS}
        cache = kv_cache.encdec_cache(params, batch, cfg, s.max_new_tokens + 1)
        start_B1 = jnp.zeros((B, 1), jnp.int32)  # T5's decoder start id (models/encdec.py)
        logits_B1V, cache = kv_cache.encdec_step(params, start_B1, cache, cfg)

        def step(tok_B, cache):
            logits_B1V, cache = kv_cache.encdec_step(params, tok_B[:, None], cache, cfg)
            return logits_B1V[:, 0], cache

        return _sample_loop(step, cache, logits_B1V[:, 0], rng, s)

    return run


_COMPILED: dict = {}


def _compiled(cfg, s: SampleSettings, family: str):
    key = (json.dumps(cfg.to_dict(), sort_keys=True), s, family)
    if key not in _COMPILED:
        builders = {"decoder": _decoder_fn, "encdec": _encdec_fn}
        if family not in builders:
            raise ValueError(f"model.family={family!r} cannot generate; use 'decoder' or 'encdec'")
        _COMPILED[key] = jax.jit(builders[family](cfg, s))
    return _COMPILED[key]


def generate_array(
    params: dict,
    prompts: Sequence[Sequence[int]],
    cfg,
    settings: SampleSettings,
    rng: jax.Array | None = None,
    *,
    prompt_len: int = 0,
) -> np.ndarray:
    """The raw [B, max_new_tokens] token array (pad_id after a row's stop id); `prompt_len` as
    `pad_prompts`' `length`."""
    family = cfg.get("family", "decoder")
    side = "left" if family == "decoder" else "right"
    tokens_BP, aux_B = pad_prompts(prompts, settings.pad_id, side=side, length=prompt_len)
    rng = jax.random.key(0) if rng is None else rng
    return np.asarray(_compiled(cfg, settings, family)(params, tokens_BP, aux_B, rng))


def generate(
    params: dict,
    prompts: Sequence[Sequence[int]],
    cfg,
    settings: SampleSettings = SampleSettings(),
    rng: jax.Array | None = None,
    *,
    prompt_len: int = 0,
) -> list[list[int]]:
    """One completion per prompt (token ids, up to and including a stop id).

    Args:
      params: unboxed parameters of a `decoder` or `encdec` model (`cfg.family`).
      prompts: token-id sequences of any lengths (encoder inputs for `encdec`).
      cfg: the model config.
      settings: sampling settings.
      rng: key for sampling (unused when greedy).
      prompt_len: pad every prompt batch to at least this length (0: the longest prompt).
    """
    out_BN = generate_array(params, prompts, cfg, settings, rng, prompt_len=prompt_len)
    completions = []
    for row in out_BN.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in settings.stop_ids), len(row))
        completions.append(row[:cut])
    return completions
