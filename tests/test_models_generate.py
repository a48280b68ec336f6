"""KV-cache generation equals full recomputation; sampling filters against numpy references."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoder, encdec, kv_cache, sampling
from models.generate import SampleSettings, generate, generate_array
from models.sizes import default_model_config

V = 384


def _cfg(family="decoder", **kw):
    cfg = default_model_config("tiny")
    cfg.update(family=family, n_layers=2, d_model=32, n_heads=4, d_ff=64, max_len=64)
    cfg.update(kw)
    return cfg


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(4, V, n).tolist() for n in lengths]


def _greedy_decoder_reference(params, prompt, cfg, n):
    """Full recomputation, one unpadded row: re-run the whole sequence for every token (right
    zeros beyond the sequence are invisible to a causal model and keep one compiled shape)."""
    apply = jax.jit(lambda p, t: decoder.apply(p, {"tokens": t}, cfg))
    seq = list(prompt)
    for _ in range(n):
        tokens = np.zeros((1, len(prompt) + n), np.int32)
        tokens[0, : len(seq)] = seq
        seq.append(int(jnp.argmax(apply(params, tokens)[0, len(seq) - 1])))
    return seq[len(prompt) :]


def _greedy_encdec_reference(params, inputs, cfg, n):
    apply = jax.jit(lambda p, b: encdec.apply(p, b, cfg))
    out = [0]  # decoder start id
    for _ in range(n):
        dec_in = np.zeros((1, n), np.int32)
        dec_in[0, : len(out)] = out
        batch = {
            "inputs": np.array([inputs], np.int32),
            "targets": np.zeros((1, n), np.int32),  # unused: decoder_inputs given
            "decoder_inputs": dec_in,
        }
        out.append(int(jnp.argmax(apply(params, batch)[0, len(out) - 1])))
    return out[1:]


DECODER_VARIANTS = {
    "rotary_gqa": dict(n_kv_heads=2),
    "learned_postln_bias": dict(
        positions="learned", norm_position="post", attn_bias=True, mlp_bias=True
    ),
    "relative_rms_swiglu": dict(
        positions="relative", norm_type="rmsnorm", activation="swiglu", attn_scale=False
    ),
}
_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "variant",
    [
        "rotary_gqa",
        pytest.param("learned_postln_bias", marks=_SLOW),
        pytest.param("relative_rms_swiglu", marks=_SLOW),
    ],
)
def test_decoder_cache_matches_full_recomputation(variant):
    cfg = _cfg(**DECODER_VARIANTS[variant])
    params = nn.unbox(decoder.init(jax.random.key(1), cfg))
    prompts = _prompts([3, 9, 6])
    n = 8
    got = generate(params, prompts, cfg, SampleSettings(max_new_tokens=n))
    want = [_greedy_decoder_reference(params, p, cfg, n) for p in prompts]
    assert got == want


def test_decoder_cached_logits_equal_apply():
    """Prefill + single-token steps give the logits of one full pass on the unpadded rows."""
    cfg = _cfg()
    params = nn.unbox(decoder.init(jax.random.key(2), cfg))
    seqs = _prompts([5, 12], seed=3)
    apply = jax.jit(lambda p, t: decoder.apply(p, {"tokens": t}, cfg))
    full = [apply(params, np.array([s], np.int32))[0] for s in seqs]
    P = 4  # prefill the first 4 tokens of the longest row's alignment, then one at a time
    pad_B = np.array([12 - 5, 0], np.int32)
    tokens_BT = np.zeros((2, 12), np.int32)
    tokens_BT[0, 7:], tokens_BT[1] = seqs[0], seqs[1]
    cache = kv_cache.init_cache(cfg, 2, 12, pad_B)
    step = jax.jit(lambda p, t, c: kv_cache.decoder_step(p, t, c, cfg))
    logits, cache = step(params, tokens_BT[:, :P], cache)
    steps = [logits]
    for t in range(P, 12):
        logits, cache = step(params, tokens_BT[:, t : t + 1], cache)
        steps.append(logits)
    cached = np.concatenate(steps, axis=1)
    np.testing.assert_allclose(cached[0, 7:], full[0], atol=1e-5)
    np.testing.assert_allclose(cached[1], full[1], atol=1e-5)


ENCDEC_VARIANTS = {
    "default": dict(),
    "t5_like": dict(
        positions="relative",
        norm_type="rmsnorm",
        attn_scale=False,
        activation="geglu",
        tie_embeddings=False,
        n_decoder_layers=3,
    ),
}


@pytest.mark.parametrize("variant", [pytest.param("default", marks=_SLOW), "t5_like"])
def test_encdec_cache_matches_full_recomputation(variant):
    cfg = _cfg("encdec", **ENCDEC_VARIANTS[variant])
    params = nn.unbox(encdec.init(jax.random.key(4), cfg))
    inputs = _prompts([4, 11, 7], seed=5)
    n = 7
    got = generate(params, inputs, cfg, SampleSettings(max_new_tokens=n))
    want = [_greedy_encdec_reference(params, x, cfg, n) for x in inputs]
    assert got == want


@_SLOW
def test_stop_ids_end_completions_and_pad_after():
    cfg = _cfg()
    params = nn.unbox(decoder.init(jax.random.key(1), cfg))
    prompts = _prompts([3, 9])
    free = generate(params, prompts, cfg, SampleSettings(max_new_tokens=8))
    stop = free[0][2]
    s = SampleSettings(max_new_tokens=8, stop_ids=(stop,), pad_id=0)
    got = generate(params, prompts, cfg, s)
    first = free[0].index(stop)
    assert got[0] == free[0][: first + 1]
    raw = generate_array(params, prompts, cfg, s)
    assert (raw[0, first + 1 :] == 0).all()
    cut = free[1].index(stop) + 1 if stop in free[1] else 8
    assert got[1] == free[1][:cut]


def _np_filter(logits, top_k, top_p):
    """Reference: the allowed token set per row, by sorting in numpy."""
    allowed = []
    for row in logits:
        order = np.argsort(-row, kind="stable")
        keep = set(range(len(row)))
        if top_k:
            kth = row[order[top_k - 1]]
            keep &= {i for i in range(len(row)) if row[i] >= kth}
        if top_p < 1.0:
            p = np.exp(row - row.max())
            p /= p.sum()
            mass, nucleus = 0.0, set()
            for i in order:
                if mass >= top_p:
                    break
                nucleus.add(int(i))
                mass += p[i]
            keep &= nucleus
        allowed.append(keep)
    return allowed


@pytest.mark.parametrize("top_k,top_p", [(5, 1.0), (0, 0.6), (3, 0.9), (1, 1.0)])
def test_filter_logits_keeps_the_reference_set(top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(4, 20)).astype(np.float32) * 2
    out = np.asarray(sampling.filter_logits(jnp.asarray(logits), top_k=top_k, top_p=top_p))
    for row, keep in zip(out, _np_filter(logits, top_k, top_p), strict=True):
        assert {i for i in range(20) if row[i] > -1e29} == keep


def test_sampling_stays_in_the_allowed_set_and_follows_temperature():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(1, 12)).astype(np.float32))
    keys = jax.random.split(jax.random.key(0), 2000)
    top3 = jax.vmap(lambda k: sampling.sample(logits, k, temperature=1.0, top_k=3)[0])
    toks = np.asarray(top3(keys))
    assert set(toks.tolist()) <= _np_filter(np.asarray(logits), 3, 1.0)[0]
    # temperature 1: empirical frequencies follow softmax(logits)
    full = np.asarray(jax.vmap(lambda k: sampling.sample(logits, k, temperature=1.0)[0])(keys))
    freq = np.bincount(full, minlength=12) / len(full)
    np.testing.assert_allclose(freq, np.asarray(jax.nn.softmax(logits[0])), atol=0.04)
    # a tiny temperature is greedy
    cold = np.asarray(jax.vmap(lambda k: sampling.sample(logits, k, temperature=1e-4)[0])(keys))
    assert (cold == int(jnp.argmax(logits[0]))).all()


@_SLOW
def test_padding_prompts_to_a_fixed_length_changes_no_token():
    """`prompt_len` (one compiled shape for batches of any longest prompt) is only more padding."""
    cfg = _cfg()
    params = nn.unbox(decoder.init(jax.random.key(1), cfg))
    prompts = _prompts([3, 9])
    s = SampleSettings(max_new_tokens=6, temperature=1.0)
    key = jax.random.key(7)
    want = generate(params, prompts, cfg, s, key)
    assert generate(params, prompts, cfg, s, key, prompt_len=16) == want
