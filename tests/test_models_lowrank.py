"""Truncated-SVD factors: exact at full rank (weights and model outputs), the Eckart-Young error
below it, ranks by energy, and the FLOPs the factorised tree really costs."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from compress.lowrank import energy_rank, factorize, factorize_params
from models import decoder
from models.counting import count_tree, flops_per_token
from models.layers import dense
from models.sizes import default_model_config


def _cfg():
    cfg = default_model_config("tiny")
    cfg.update({"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64})
    return cfg


def test_full_rank_reproduces_every_layer_and_the_model():
    cfg = _cfg()
    params = jax.device_get(nn.unbox(decoder.init(jax.random.key(0), cfg)))
    full, ranks = factorize_params(params, decoder, cfg, rank=10_000)
    assert ranks == {"q": 32, "k": 32, "v": 32, "o": 32, "wi": 32, "wo": 32}
    for key in ranks:
        w, f = params["layers"][key], full["layers"][key]
        n_in = 2 if key == "o" else 1
        for layer in range(cfg.n_layers):
            x = np.eye(int(np.prod(w.shape[1 : 1 + n_in]))).reshape(-1, *w.shape[1 : 1 + n_in])
            layer_f = {"a": f["a"][layer], "b": f["b"][layer]}
            np.testing.assert_allclose(
                dense(x, layer_f, n_in), dense(x, w[layer], n_in), rtol=1e-5, atol=1e-6
            )
    batch = {"tokens": np.asarray(jax.random.randint(jax.random.key(1), (2, 12), 0, 300))}
    ref = jax.jit(lambda p: decoder.apply(p, batch, cfg))(params)
    out = jax.jit(lambda p: decoder.apply(p, batch, cfg))(full)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_truncation_error_and_energy_rank():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(2, 16, 24)).astype(np.float32)
    f, r = factorize(w, (1,), rank=5)
    assert r == 5 and f["a"].shape == (2, 16, 5) and f["b"].shape == (2, 5, 24)
    for layer in range(2):
        s = np.linalg.svd(w[layer].astype(np.float64), compute_uv=False)
        err = np.linalg.norm(f["a"][layer] @ f["b"][layer] - w[layer])
        np.testing.assert_allclose(err, np.sqrt(np.sum(s[5:] ** 2)), rtol=1e-4)  # Eckart-Young
    s = np.array([3.0, 2.0, 1.0, 1.0])  # energies 9, 4, 1, 1 of 15
    assert energy_rank(s, 0.6) == 1 and energy_rank(s, 0.61) == 2 and energy_rank(s, 1.0) == 4
    with pytest.raises(ValueError, match="energy"):
        energy_rank(s, 0.0)


def test_factorised_flops_and_dense_counts():
    cfg = _cfg()
    params = jax.device_get(nn.unbox(decoder.init(jax.random.key(0), cfg)))
    dense_counts = count_tree(params, cfg, 12)
    assert dense_counts["flops_per_token"] == flops_per_token(cfg, 12)["flops_per_token"]
    low, _ = factorize_params(params, decoder, cfg, targets=("wi", "wo"), rank=4)
    counts = count_tree(low, cfg, 12)
    saved = 2 * 2 * (32 * 64 - 4 * (32 + 64))  # layers x (wi, wo) x (D F - r (D + F))
    assert counts["params"] == dense_counts["params"] - saved
    assert counts["flops_per_token"] == dense_counts["flops_per_token"] - 6 * saved
