"""Per-channel int8/int4 quantization, its checkpoint bytes, fake-quant with a straight-through
gradient, and activation fake-quant inserted by the apply wrapper, against numpy references and
the formula models/layers.py `dense` used to apply itself."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from compress.measure import dir_bytes, restore_params, save_params
from compress.quant import (
    dequantize,
    dequantize_params,
    fake_quant,
    fake_quant_rows,
    input_axes,
    quant_spec,
    quantize,
    quantize_params,
    wrap_apply,
)
from models import blocks, decoder
from models.layers import dense, intercept_dense_inputs
from models.sizes import default_model_config


def _cfg(**kw):
    cfg = default_model_config("tiny")
    cfg.update({"n_layers": 2, "d_model": 64, "n_heads": 4, "d_ff": 128, **kw})
    return cfg


def test_input_axes_follow_the_matmul():
    spec = quant_spec(decoder, _cfg())
    layers = spec["layers"]
    assert layers["q"] == layers["k"] == layers["v"] == layers["wi"] == (1,)  # contract embed
    assert layers["o"] == (1, 2)  # heads x head_dim -> embed
    assert layers["wo"] == (1,)  # mlp -> embed
    assert spec["embed"] == (1,)  # one scale per vocabulary row
    assert layers["ln1_scale"] is None and spec["final_ln_bias"] is None
    assert input_axes(("embed", "vocab")) == (0,)  # an untied unembedding: per vocab column


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_error_within_half_a_step_per_channel(bits):
    rng = np.random.default_rng(0)
    # Channels of very different ranges, one all-zero channel (a pruned neuron).
    w = rng.normal(size=(2, 32, 4, 8)) * rng.uniform(0.01, 3.0, size=(2, 1, 4, 8))
    w[0, :, 1, 2] = 0.0
    w = w.astype(np.float32)
    q, scale = quantize(jnp.asarray(w), (1,), bits)
    qmax = 2 ** (bits - 1) - 1
    ref_scale = np.abs(w).max(axis=1, keepdims=True) / qmax
    ref_scale[ref_scale == 0] = 1.0
    np.testing.assert_allclose(scale, ref_scale, rtol=1e-6)
    assert q.dtype == jnp.int8 and scale.shape == (2, 1, 4, 8)
    assert int(jnp.abs(q).max()) == qmax  # every non-zero channel uses its full range
    err = np.abs(np.asarray(dequantize(q, scale)) - w)
    assert np.all(err <= ref_scale / 2 * (1 + 1e-5) + 1e-12)
    assert np.all(np.asarray(dequantize(q, scale))[0, :, 1, 2] == 0.0)
    np.testing.assert_array_equal(q, np.clip(np.round(w / ref_scale), -qmax, qmax))


def test_fake_quant_gradient_is_straight_through():
    w = jax.random.normal(jax.random.key(0), (16, 8))
    c = jax.random.normal(jax.random.key(1), (16, 8))
    out = fake_quant(w, (0,), 4)
    np.testing.assert_allclose(out, dequantize(*quantize(w, (0,), 4)), rtol=1e-6)
    assert float(jnp.abs(out - w).max()) > 0  # it does round
    grad = jax.grad(lambda w: jnp.sum(c * fake_quant(w, (0,), 4)))(w)
    np.testing.assert_array_equal(grad, c)


def test_int8_activations_through_the_interceptor():
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    w = jax.random.normal(jax.random.key(1), (16, 4, 3))
    x_np = np.asarray(x).reshape(10, 16)
    s = np.abs(x_np).max(-1, keepdims=True) / 127
    xq = np.clip(np.round(x_np / s), -127, 127) * s
    ref = (xq @ np.asarray(w).reshape(16, 12)).reshape(2, 5, 4, 3)
    with intercept_dense_inputs(lambda x_RI: fake_quant_rows(x_RI, 8)):
        out = dense(x, w)
        grad = jax.grad(lambda x: dense(x, w).sum())(x)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, jax.grad(lambda x: dense(x, w).sum())(x), rtol=1e-6)
    assert float(jnp.abs(dense(x, w) - out).max()) > 1e-4  # outside the block: no rounding


def _old_dense(x, w, n_in=1, act_bits=0):
    """models/layers.py `dense` as it was, with the activation fake-quant built in."""
    if isinstance(w, dict):
        return _old_dense(_old_dense(x, w["a"], n_in, act_bits), w["b"], 1, act_bits)
    lead, inner = x.shape[: x.ndim - n_in], x.shape[x.ndim - n_in :]
    x_RI = x.reshape(-1, math.prod(inner))
    if act_bits:
        x_RI = fake_quant_rows(x_RI, act_bits)
    y = x_RI @ w.reshape(math.prod(inner), -1).astype(x.dtype)
    return y.reshape(*lead, *w.shape[n_in:])


@pytest.mark.parametrize("layer_loop", ["python", "scan"])
def test_act_bits_wrapper_equals_the_old_in_model_path(layer_loop, monkeypatch):
    cfg = _cfg(layer_loop=layer_loop)
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    batch = {"tokens": jax.random.randint(jax.random.key(2), (2, 16), 0, 300)}
    new = jax.jit(lambda p: wrap_apply(decoder, cfg, act_bits=4)(p, batch, cfg))(params)
    plain = jax.jit(lambda p: decoder.apply(p, batch, cfg))(params)
    monkeypatch.setattr(blocks, "dense", lambda x, w, n_in=1: _old_dense(x, w, n_in, 4))
    old = jax.jit(lambda p: decoder.apply(p, batch, cfg))(params)
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(new - plain).max()) > 1e-3  # it does quantize


def test_int8_model_and_checkpoint_bytes(tmp_path):
    cfg = _cfg(d_model=128, n_heads=4, d_ff=512)
    params = jax.device_get(nn.unbox(decoder.init(jax.random.key(0), cfg)))
    spec = quant_spec(decoder, cfg)
    qparams = jax.device_get(quantize_params(params, spec, 8))
    assert qparams["layers"]["wi"]["int8"].dtype == np.int8
    assert qparams["layers"]["ln1_scale"].dtype == np.float32  # vectors stay f32
    save_params(str(tmp_path / "f32"), params)
    save_params(str(tmp_path / "int8"), qparams)
    ratio = dir_bytes(str(tmp_path / "int8")) / dir_bytes(str(tmp_path / "f32"))
    assert ratio <= 0.30, ratio
    restored = restore_params(str(tmp_path / "int8"))
    np.testing.assert_array_equal(restored["layers"]["q"]["int8"], qparams["layers"]["q"]["int8"])
    # Evaluation through the int8 tree: the forward pass of the dequantized weights exactly.
    batch = {"tokens": jax.random.randint(jax.random.key(2), (2, 16), 0, 300)}
    logits = jax.jit(lambda p: wrap_apply(decoder, cfg)(p, batch, cfg))(restored)
    apply = jax.jit(lambda p: decoder.apply(p, batch, cfg))
    np.testing.assert_allclose(logits, apply(dequantize_params(qparams)), rtol=1e-5, atol=1e-5)
    f32 = apply(params)
    assert 0 < float(jnp.abs(logits - f32).max()) < 0.05


def test_weight_bits_fake_quantize_weights():
    cfg = _cfg()
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    batch = {"tokens": jax.random.randint(jax.random.key(2), (2, 16), 0, 300)}
    qat = jax.jit(lambda p: wrap_apply(decoder, cfg, 4)(p, batch, cfg))(params)
    ptq = dequantize_params(quantize_params(params, quant_spec(decoder, cfg), 4))
    ref = jax.jit(lambda p: decoder.apply(p, batch, cfg))(ptq)
    np.testing.assert_allclose(qat, ref, rtol=1e-5, atol=1e-5)
    # Its gradient is the f32 model's gradient at the quantized point (straight-through).
    loss = lambda f: lambda p: f(p, batch, cfg).sum()
    g_qat = jax.jit(jax.grad(loss(wrap_apply(decoder, cfg, 4))))(params)
    g_ref = jax.jit(jax.grad(loss(decoder.apply)))(ptq)
    np.testing.assert_allclose(g_qat["layers"]["wi"], g_ref["layers"]["wi"], rtol=1e-4, atol=1e-6)
