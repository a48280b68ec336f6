"""Structured pruning: removing heads and neurons that carry nothing leaves the function unchanged,
and the smaller config's counts are the smaller tree's."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from compress.quant import logical_names
from compress.structured import importance, keep_indices, prune_structured
from models import decoder
from models.counting import count_params, count_tree, flops_per_token
from models.sizes import default_model_config


def _setup():
    cfg = default_model_config("tiny")
    cfg.update({"n_layers": 2, "d_model": 32, "n_heads": 4, "d_ff": 64})
    params = jax.device_get(nn.unbox(decoder.init(jax.random.key(0), cfg)))
    # Head 1 of layer 0 and head 3 of layer 1 write nothing; neurons 5..20 of every layer too.
    o = np.array(params["layers"]["o"])
    o[0, 1] = 0.0
    o[1, 3] = 0.0
    wo = np.array(params["layers"]["wo"])
    wo[:, 5:21] = 0.0
    params["layers"] = dict(params["layers"], o=o, wo=wo)
    batch = {"tokens": np.asarray(jax.random.randint(jax.random.key(1), (2, 12), 0, 300))}
    return cfg, params, batch


@pytest.mark.parametrize("method", ["weight", "taylor"])
def test_pruning_dead_units_leaves_outputs_unchanged(method):
    cfg, params, batch = _setup()
    grads = []
    if method == "taylor":
        loss = lambda p: jax.nn.logsumexp(decoder.apply(p, batch, cfg), -1).mean()
        grads = [jax.device_get(jax.grad(loss)(params))]
    scores = importance(params, logical_names(decoder, cfg), method=method, grads_list=grads)
    assert scores["heads"].shape == (2, 4) and scores["mlp"].shape == (2, 64)
    assert scores["heads"][0, 1] == scores["heads"][1, 3] == 0.0
    assert np.all(scores["mlp"][:, 5:21] == 0.0)
    new_cfg, new_params = prune_structured(params, cfg, decoder, scores, n_heads=3, d_ff=64 - 16)
    assert (new_cfg.n_heads, new_cfg.d_ff, new_cfg.d_head) == (3, 48, 8)
    assert new_params["layers"]["q"].shape == (2, 32, 3, 8)
    assert new_params["layers"]["o"].shape == (2, 3, 8, 32)
    assert new_params["layers"]["wi"].shape == (2, 32, 48)
    ref = jax.jit(lambda p: decoder.apply(p, batch, cfg))(params)
    out = jax.jit(lambda p: decoder.apply(p, batch, new_cfg))(new_params)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    # Real reductions, counted from the new config and from the new tree alike.
    counts = count_tree(new_params, new_cfg, 12)
    assert counts["params"] == count_params(new_cfg)["total"] < count_params(cfg)["total"]
    flops = flops_per_token(new_cfg, 12)["flops_per_token"]
    assert counts["flops_per_token"] == flops < flops_per_token(cfg, 12)["flops_per_token"]


def test_keep_indices_and_bad_requests():
    scores = np.array([[0.1, 3.0, 2.0, 0.0], [5.0, 0.0, 1.0, 4.0]])
    np.testing.assert_array_equal(keep_indices(scores, 2), [[1, 2], [0, 3]])
    with pytest.raises(ValueError, match="cannot keep"):
        keep_indices(scores, 5)
    cfg, params, _ = _setup()
    cfg.n_kv_heads = 2
    with pytest.raises(ValueError, match="MHA"):
        prune_structured(params, cfg, decoder, {"heads": scores, "mlp": None}, n_heads=2, d_ff=8)
