"""LoRA as a parameter transform: merged == unmerged, zero B == base, the low-rank identity."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoder, encdec, lora
from models.layers import dense
from models.sizes import default_model_config
from train.adapt import AdaptedModel, default_adapt_config


def _cfg(family="decoder", **kw):
    cfg = default_model_config("tiny")
    cfg.update(family=family, n_layers=2, d_model=32, n_heads=4, d_ff=64)
    cfg.update(kw)
    return cfg


def _lcfg(**kw):
    c = lora.default_lora_config()
    c.update(kw)
    return c


def _random_b(adapters, seed=0):
    """Adapters with a non-zero B (as after training)."""
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return jax.tree.unflatten(
        tree, [jax.random.normal(k, x.shape) * 0.05 for k, x in zip(keys, leaves, strict=True)]
    )


TOKENS = np.random.default_rng(0).integers(4, 384, (2, 12)).astype(np.int32)


def test_targets_by_name_and_shapes():
    cfg = _cfg(activation="swiglu")
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    ad = lora.init(jax.random.key(1), params, _lcfg(targets="q,k,v,o,wi_.*,wo", rank=4))
    assert sorted(ad["layers"]) == ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]
    assert ad["layers"]["q"]["a"].shape == (2, 32, 4)  # [L, D, r]
    assert ad["layers"]["q"]["b"].shape == (2, 4, 32)  # [L, r, N * H]
    assert ad["layers"]["o"]["a"].shape == (2, 32, 4)  # input heads x head_dim
    assert ad["layers"]["wi_0"]["b"].shape == (2, 4, 64)
    assert "embed" not in ad
    with pytest.raises(ValueError, match="adapt.lora.targets"):
        lora.init(jax.random.key(1), params, _lcfg(targets="nope"))


def test_zero_b_equals_base_model():
    cfg = _cfg()
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    ad = lora.init(jax.random.key(1), params, _lcfg(targets="q,k,v,o,wi,wo"))
    base = decoder.apply(params, {"tokens": TOKENS}, cfg)
    adapted = decoder.apply(
        lora.merge(params, ad, _lcfg(targets="q,k,v,o,wi,wo")), {"tokens": TOKENS}, cfg
    )
    np.testing.assert_array_equal(np.asarray(adapted), np.asarray(base))


def test_merge_is_the_low_rank_update_of_each_projection():
    """x (W + s A B) == x W + s (x A) B for the factorised path, on a q and an o projection."""
    cfg = _cfg()
    lcfg = _lcfg(targets="q,o", rank=3, alpha=6.0)
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    ad = _random_b(lora.init(jax.random.key(1), params, lcfg))
    merged = lora.merge(params, ad, lcfg)
    x_BTD = jax.random.normal(jax.random.key(2), (2, 5, 32))
    s = lcfg.alpha / lcfg.rank
    q_a, q_b = ad["layers"]["q"]["a"][1], ad["layers"]["q"]["b"][1]
    want = dense(x_BTD, params["layers"]["q"][1]) + s * ((x_BTD @ q_a) @ q_b).reshape(2, 5, 4, 8)
    np.testing.assert_allclose(dense(x_BTD, merged["layers"]["q"][1]), want, atol=1e-5)
    h_BTNH = jax.random.normal(jax.random.key(3), (2, 5, 4, 8))
    o_a, o_b = ad["layers"]["o"]["a"][0], ad["layers"]["o"]["b"][0]
    want = dense(h_BTNH, params["layers"]["o"][0], n_in=2) + s * (
        (h_BTNH.reshape(2, 5, 32) @ o_a) @ o_b
    )
    np.testing.assert_allclose(dense(h_BTNH, merged["layers"]["o"][0], n_in=2), want, atol=1e-5)
    # the unmerged tree is untouched, and unmerge gives the base weights back
    back = lora.unmerge(merged, ad, lcfg)
    for got, base in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(got, base, atol=1e-6)


@pytest.mark.parametrize("family", ["decoder", "encdec"])
def test_merged_weights_give_the_unmerged_logits(family):
    """Inference with merged weights == the adapted model the training step runs (<= 1e-5)."""
    cfg = _cfg(family)
    a = default_adapt_config()
    a.method = "lora"
    a.lora.targets = "q,k,v,o,wi,wo,cross_.*"
    module = decoder if family == "decoder" else encdec
    model = AdaptedModel(module, a, 384)
    params = nn.unbox(model.init(jax.random.key(0), cfg))
    params["lora"] = _random_b(params["lora"])
    if family == "decoder":
        batch = {"tokens": TOKENS}
    else:
        batch = {"inputs": TOKENS, "targets": TOKENS[:, :7]}
    unmerged = model.apply(params, batch, cfg)
    merged_params = lora.merge(params["base"], params["lora"], a.lora)
    merged = module.apply(merged_params, batch, cfg)
    base = module.apply(params["base"], batch, cfg)
    np.testing.assert_allclose(merged, unmerged, atol=1e-5, rtol=0)
    assert np.abs(np.asarray(merged - base)).max() > 1e-3  # the adapters do change the model


def test_rank_dropout_only_when_training():
    cfg = _cfg()
    lcfg = _lcfg(targets="q,v", dropout=0.5)
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    ad = _random_b(lora.init(jax.random.key(1), params, lcfg))
    det = lora.merge(params, ad, lcfg)
    drop = lora.merge(params, ad, lcfg, rng=jax.random.key(5))
    assert not np.allclose(drop["layers"]["q"], det["layers"]["q"])
    # each rank component is either dropped or scaled by 1 / (1 - p)
    d_full = det["layers"]["q"] - params["layers"]["q"]
    d_drop = drop["layers"]["q"] - params["layers"]["q"]
    assert jnp.abs(d_drop).sum() > 0 and not np.allclose(d_drop, 2 * d_full)
