"""LoRA as a parameter transform: merged == unmerged, zero B == base, the low-rank identity."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from adapt import lora
from adapt.wrap import AdaptedModel, default_adapt_config
from models import decoder, encdec
from models.layers import dense
from models.sizes import default_model_config


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
    """Each rank component of each adapted matrix is dropped (0) or kept and scaled by
    1 / (1 - p), independently, with probability p: read off the merged weights."""
    cfg = _cfg()
    p = 0.25
    lcfg = _lcfg(targets="q,v", dropout=p, rank=4)
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    ad = _random_b(lora.init(jax.random.key(1), params, lcfg))
    det = lora.merge(params, ad, lcfg)
    n_keys = 300
    keys = jax.random.split(jax.random.key(5), n_keys)
    drops = jax.vmap(lambda k: lora.merge(params, ad, lcfg, rng=k))(keys)
    s = lcfg.alpha / lcfg.rank
    coefs = {}
    for name in ("q", "v"):
        a = np.asarray(ad["layers"][name]["a"], np.float64)  # [L, D, r]
        b = np.asarray(ad["layers"][name]["b"], np.float64)  # [L, r, O]
        # Rank component r of the update, over every layer: s * a[:, :, r] (x) b[:, r, :].
        comps = np.stack([s * np.einsum("ld,lo->ldo", a[..., r], b[:, r]) for r in range(4)])
        comps = comps.reshape(4, -1)
        base = np.asarray(params["layers"][name], np.float64).reshape(-1)
        full = np.asarray(det["layers"][name], np.float64).reshape(-1) - base
        np.testing.assert_allclose(full, comps.sum(0), atol=1e-5)  # no dropout: every component
        d = np.asarray(drops["layers"][name], np.float64).reshape(n_keys, -1) - base
        coefs[name] = np.linalg.lstsq(comps.T, d.T, rcond=None)[0].T  # [keys, r]
        np.testing.assert_allclose(coefs[name] @ comps, d, atol=1e-5)  # exactly such a sum
    c = np.stack(list(coefs.values()))  # [2 targets, keys, r]
    kept = np.abs(c - 1 / (1 - p)) < 1e-3
    assert (kept | (np.abs(c) < 1e-3)).all()  # every coefficient is 0 or 1 / (1 - p)
    # 2400 Bernoulli(0.75) draws: 1 sigma of the kept fraction is 0.009.
    assert abs(kept.mean() - (1 - p)) < 0.03
    assert abs(c.mean() - 1.0) < 0.04  # inverted scaling: the update is unbiased
    # Independent per component, per target and per key (not one shared mask).
    for i, j in ((0, 1), (2, 3)):
        both = (kept[..., i] & kept[..., j]).mean()
        assert abs(both - (1 - p) ** 2) < 0.05
    assert (kept[0] != kept[1]).any(axis=1).mean() > 0.3
    assert len({tuple(row) for row in kept[0]}) > 8
