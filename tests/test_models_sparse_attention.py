"""Sparse and local attention: which positions attend to which (hand-written tables), blockwise ==
dense with the pattern's mask (forward and gradients, GQA, padding to the block, packed segments),
per-layer configuration, the decoder with a sparse pattern, and the counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoder
from models.counting import flops_per_token
from models.layers import NEG_INF, dot_attention
from models.sizes import default_model_config
from models.sparse_attention import (
    keys_per_query,
    layer_pattern,
    layer_period,
    pattern_mask,
    sparse_attention,
)

# Row i lists the keys query i attends to ('x'); written by hand from Child et al.'s definitions.
TABLES = {
    ("dense", True, ()): ["x...", "xx..", "xxx.", "xxxx"],
    ("dense", False, ()): ["xxxx"] * 4,
    # local, w = 3: the 3 latest keys (itself included)
    ("local", True, (("window", 3),)): [
        "x.......",
        "xx......",
        "xxx.....",
        ".xxx....",
        "..xxx...",
        "...xxx..",
        "....xxx.",
        ".....xxx",
    ],
    # local bidirectional, w = 2: |i - j| < 2
    ("local", False, (("window", 2),)): [
        "xx....",
        "xxx...",
        ".xxx..",
        "..xxx.",
        "...xxx",
        "....xx",
    ],
    # strided, l = 3: the 3 latest keys, then every 3rd one before them
    ("strided", True, (("stride", 3),)): [
        "x...........",
        "xx..........",
        "xxx.........",
        "xxxx........",
        ".xxxx.......",
        "..xxxx......",
        "x..xxxx.....",
        ".x..xxxx....",
        "..x..xxxx...",
        "x..x..xxxx..",
        ".x..x..xxxx.",
        "..x..x..xxxx",
    ],
    # strided bidirectional, l = 3: |i - j| < 3 or i - j a multiple of 3
    ("strided", False, (("stride", 3),)): [
        "xxxx..x..",
        "xxxxx..x.",
        "xxxxxx..x",
        "xxxxxxx..",
        ".xxxxxxx.",
        "..xxxxxxx",
        "x..xxxxxx",
        ".x..xxxxx",
        "..x..xxxx",
    ],
    # fixed, l = 4, c = 1: own block of 4 (causally), plus key 3 of every earlier block
    ("fixed", True, (("stride", 4), ("summary", 1))): [
        "x...........",
        "xx..........",
        "xxx.........",
        "xxxx........",
        "...xx.......",
        "...xxx......",
        "...xxxx.....",
        "...xxxxx....",
        "...x...xx...",
        "...x...xxx..",
        "...x...xxxx.",
        "...x...xxxxx",
    ],
    # fixed bidirectional, l = 3, c = 1: own block, plus the last key of every block
    ("fixed", False, (("stride", 3), ("summary", 1))): [
        "xxx..x..x",
        "xxx..x..x",
        "xxx..x..x",
        "..xxxx..x",
        "..xxxx..x",
        "..xxxx..x",
        "..x..xxxx",
        "..x..xxxx",
        "..x..xxxx",
    ],
}


def _table(rows):
    return np.array([[c == "x" for c in row] for row in rows])


@pytest.mark.parametrize("key", list(TABLES), ids=lambda k: f"{k[0]}-{'causal' if k[1] else 'bi'}")
def test_each_pattern_attends_to_the_positions_of_its_table(key):
    pattern, causal, kw = key
    expected = _table(TABLES[key])
    T = expected.shape[0]
    np.testing.assert_array_equal(pattern_mask(pattern, T, causal=causal, **dict(kw)), expected)
    if pattern == "dense":
        return
    # The blockwise kernel's own attended set: zero queries give uniform weights over it, and
    # one-hot values (v_j = e_j) read the weights out, so out[i, j] > 0 iff i attends j.
    q = jnp.zeros((1, T, 1, T), jnp.float32)
    v = jnp.eye(T, dtype=jnp.float32)[None, :, None, :]
    attend = jax.jit(
        lambda q, v: sparse_attention(
            q, q, v, jnp.ones((1, T), jnp.int32), pattern=pattern, causal=causal, **dict(kw)
        )
    )
    out = attend(q, v)
    attended = np.asarray(out[0, :, 0, :]) > 1e-6
    np.testing.assert_array_equal(attended, expected)
    np.testing.assert_allclose(out[0, :, 0, :].sum(-1), 1.0, rtol=1e-6)


CASES = [
    ("local", dict(window=5)),
    ("strided", dict(stride=6)),
    ("fixed", dict(stride=6, summary=2)),
    ("strided", dict(stride=1)),  # edge: no band beyond itself, every key a "column" key
]


def _qkv(B=2, T=37, N=4, K=2, H=8, seed=0):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=(B, T, n, H)), jnp.float32) for n in (N, K, K)) + (
        jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32),
    )


def _segments(B, T):
    seg = np.ones((B, T), np.int32)
    seg[0, 15:] = 2  # two packed documents
    seg[1, T - 7 :] = 0  # trailing padding
    return jnp.asarray(seg)


def _dense_reference(q, k, v, seg, pattern, causal, kw):
    T = q.shape[1]
    mask = pattern_mask(pattern, T, causal=causal, **kw)[None] & (
        np.asarray(seg)[:, :, None] == np.asarray(seg)[:, None, :]
    )
    bias = jnp.asarray(np.where(mask, 0.0, NEG_INF)[:, None], jnp.float32)
    return dot_attention(q, k, v, bias)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bi"])
@pytest.mark.parametrize("pattern,kw", CASES, ids=[f"{p}-{kw}" for p, kw in CASES])
def test_blockwise_equals_dense_with_the_mask_forward_and_gradients(pattern, kw, causal):
    """T = 37 is not a multiple of any block (padding), GQA with N = 4 query heads on K = 2,
    one row holds two packed documents and the other ends in padding."""
    q, k, v, cot = _qkv()
    seg = _segments(*q.shape[:2])

    def loss(fn, q, k, v):
        return (fn(q, k, v) * cot).sum()

    sparse = lambda q, k, v: sparse_attention(q, k, v, seg, pattern=pattern, causal=causal, **kw)
    dense = lambda q, k, v: _dense_reference(q, k, v, seg, pattern, causal, kw)
    np.testing.assert_allclose(jax.jit(sparse)(q, k, v), dense(q, k, v), rtol=1e-5, atol=1e-6)
    g_sparse = jax.jit(jax.grad(lambda *a: loss(sparse, *a), argnums=(0, 1, 2)))(q, k, v)
    g_dense = jax.jit(jax.grad(lambda *a: loss(dense, *a), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g_sparse, g_dense, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pattern,kw", CASES[:2], ids=[f"{p}-{kw}" for p, kw in CASES[:2]])
def test_a_packed_document_sees_only_itself(pattern, kw):
    """Local and strided patterns depend on i - j only, so a document packed at offset 7 gets the
    outputs it gets alone; and changing the document before it changes nothing of it. (The fixed
    pattern's blocks are aligned to positions in the packed row, so it is not shift-invariant.)"""
    q, k, v, _ = _qkv(B=1, T=20)
    seg = jnp.asarray(np.array([[1] * 7 + [2] * 13], np.int32))
    attend = jax.jit(lambda q, k, v, seg: sparse_attention(q, k, v, seg, pattern=pattern, **kw))
    packed = attend(q, k, v, seg)
    alone = attend(q[:, 7:], k[:, 7:], v[:, 7:], jnp.ones((1, 13), jnp.int32))
    np.testing.assert_allclose(packed[:, 7:], alone, rtol=1e-5, atol=1e-6)
    other = attend(q, k.at[:, :7].add(1.0), v.at[:, :7].add(1.0), seg)
    np.testing.assert_allclose(other[:, 7:], packed[:, 7:], rtol=1e-6, atol=1e-7)


def test_strided_kernel_never_builds_a_t_by_t_buffer():
    """Compiled fwd + bwd temporaries at T = 4096, one head: a single f32 T x T matrix is 64 MiB
    (dense attention keeps several); the strided kernel (l = 64: 2l + T/l = 192 keys per query,
    3 MiB a score tensor) stays below half of one."""
    T, H = 4096, 16
    x = jnp.zeros((1, T, 1, H), jnp.float32)
    seg = jnp.ones((1, T), jnp.int32)
    fn = lambda q, k, v: sparse_attention(q, k, v, seg, pattern="strided", stride=64).sum()
    compiled = jax.jit(jax.grad(fn, argnums=(0, 1, 2))).lower(x, x, x).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < T * T * 4 / 2, temp


SPARSE_FIELDS = ("pattern", "window", "layers", "stride", "summary")


def _cfg(**kw):
    cfg = default_model_config("tiny")
    cfg.n_layers = 2
    cfg.d_model = 32
    cfg.n_heads = 4
    cfg.n_kv_heads = 2
    cfg.d_ff = 64
    sparse = {k: kw.pop(k) for k in SPARSE_FIELDS if k in kw}  # model.sparse's fields
    cfg.update(kw)
    cfg.sparse.update(sparse)
    return cfg


def test_per_layer_patterns_and_scan_periods():
    cfg = _cfg(n_layers=4, pattern="strided", layers="alternate")
    assert [layer_pattern(cfg, i) for i in range(4)] == ["dense", "strided"] * 2
    assert layer_period(cfg) == 2
    assert layer_period(_cfg(n_layers=4, pattern="local")) == 1
    assert layer_period(_cfg(n_layers=4)) == 1
    assert layer_period(_cfg(n_layers=3, pattern="fixed", layers="alternate")) == 3
    cfg = _cfg(n_layers=4, pattern="local", layers="0,3")
    assert [layer_pattern(cfg, i) for i in range(4)] == ["local", "dense", "dense", "local"]
    assert layer_period(cfg) == 4
    for field, value, kw in [
        ("pattern", "banded", {}),
        ("layers", "1,x", dict(pattern="local")),
        ("layers", "4", dict(pattern="local")),
    ]:
        with pytest.raises(ValueError, match=f"model.sparse.{field}"):
            layer_pattern(_cfg(n_layers=4, **{field: value, **kw}), 0)
    with pytest.raises(ValueError, match="model.sparse.pattern='strided' does not take pos"):
        decoder.init(jax.random.key(0), _cfg(pattern="strided", positions="relative"))


def _apply(params, tokens, cfg):
    return jax.jit(lambda p, t: decoder.apply(p, {"tokens": t}, cfg))(params, tokens)


@pytest.mark.slow
def test_sparse_decoder_is_causal_and_scan_equals_python_loop():
    """Two layers, dense then strided ('alternate', scanned in one group of 2); then local in
    layer 0 only."""
    cfg = _cfg(
        n_layers=2,
        pattern="strided",
        layers="alternate",
        window=4,
        stride=4,
        summary=1,
    )
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    tokens = np.random.default_rng(0).integers(0, 384, (2, 22)).astype(np.int32)
    apply = jax.jit(lambda p, t: decoder.apply(p, {"tokens": t}, cfg))  # one compile
    base = apply(params, tokens)
    for t in [0, 9, 20]:
        changed = tokens.copy()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 384
        out = apply(params, changed)
        np.testing.assert_allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-5)
        assert np.abs(np.asarray(out[:, t + 1 :] - base[:, t + 1 :])).max() > 1e-3
    scanned = cfg.copy_and_resolve_references()
    scanned.layer_loop = "scan"
    np.testing.assert_allclose(_apply(params, tokens, scanned), base, atol=1e-5)
    # The sparse layers really differ from dense ones (the pattern is in effect).
    dense = _apply(params, tokens, _cfg(n_layers=2))
    assert np.abs(np.asarray(dense - base)).max() > 1e-3
    c = cfg.copy_and_resolve_references()
    c.sparse.pattern, c.sparse.layers = "local", "0"
    ref = _apply(params, tokens, c)
    c.layer_loop = "scan"
    np.testing.assert_allclose(_apply(params, tokens, c), ref, atol=1e-5)


@pytest.mark.slow
def test_strided_decoder_trains():
    """SGD steps of an all-strided decoder on a repeating sequence: loss finite and falling."""
    cfg = _cfg(pattern="strided", stride=0, layer_loop="scan")
    params = nn.unbox(decoder.init(jax.random.key(1), cfg))
    tokens = np.tile(np.arange(8, dtype=np.int32), (2, 4))  # T = 31, l = ceil(sqrt(31)) = 6

    def loss_fn(p):
        logits = decoder.apply(p, {"tokens": tokens[:, :-1]}, cfg)
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    losses = []
    for _ in range(20):
        loss, grads = step(params)
        params = jax.tree.map(lambda w, g: w - 0.5 * g, params, grads)
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_keys_and_flops_per_token_by_hand():
    T = 1024
    cfg = _cfg(pattern="strided", stride=32)
    assert keys_per_query(cfg, 0, T) == 2 * 32 + 32
    assert keys_per_query(_cfg(pattern="strided", stride=0), 0, T) == 96
    assert keys_per_query(_cfg(pattern="local", window=256), 0, T) == 512
    cfg_fixed = _cfg(pattern="fixed", stride=128, summary=32)
    assert keys_per_query(cfg_fixed, 0, T) == 128 + 8 * 32
    assert keys_per_query(_cfg(), 0, T) == T
    # 2 layers, N * H = 32: alternate = one dense layer (T keys) and one strided (96 keys).
    alt = _cfg(pattern="strided", stride=32, layers="alternate")
    dense = flops_per_token(_cfg(), T)
    sparse = flops_per_token(alt, T)
    assert dense["attention_flops_per_token"] == 12 * 32 * (T + T)
    assert sparse["attention_flops_per_token"] == 12 * 32 * (T + 96)
    assert dense["flops_per_token"] - sparse["flops_per_token"] == 12 * 32 * (
        T - 96
    )  # the matmul part is unchanged
