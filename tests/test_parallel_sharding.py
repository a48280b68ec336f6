"""Sharded training equals single-device training; parameter shardings match the rule tables."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from models import decoder
from models.sizes import default_model_config
from objectives.causal_lm import make_loss_fn
from parallel.mesh import make_mesh, mesh_shape
from parallel.rules import get_rules
from parallel.sharding import batch_shardings
from train.optim import default_train_config, make_optimizer, schedule_args
from train.state import create_train_state
from train.step import make_train_step


def _model_cfg():
    cfg = default_model_config("tiny")
    cfg.n_heads = 8  # so that tensor parallelism over 8 devices divides the heads
    return cfg


def _batch(B=8, T=32):
    rng = np.random.default_rng(0)
    tokens = rng.integers(104, 360, size=(B, T)).astype(np.int32)
    seg = np.ones((B, T), np.int32)
    seg[:, T // 2 :] = 2  # two packed documents per row
    seg[0, -4:] = 0  # some padding
    pos = np.concatenate([np.arange(T // 2)] * 2)[None].repeat(B, 0).astype(np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos}


def _one_step(mesh_cfg, rules_name, devices=None, grad_accum=1):
    cfg = _model_cfg()
    mesh = make_mesh(mesh_cfg, devices)
    rules = get_rules(rules_name)
    tcfg = default_train_config()
    # Adam's first update is lr * g / (|g| + eps): with a tiny eps it is sign(g), which turns
    # float-reduction-order noise in near-zero gradients into full-size differences. A larger eps
    # keeps the update proportional to g, so comparing updates compares gradients.
    tcfg.lr, tcfg.warmup_steps, tcfg.eps = 1e-2, 0, 1e-3
    opt, sched = make_optimizer(tcfg), schedule_args(tcfg)
    loss_fn = make_loss_fn(cfg, decoder.apply)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, shardings = create_train_state(decoder, cfg, opt, mesh, rules, seed=0)
        bs = batch_shardings(("tokens", "segment_ids", "positions"), mesh, rules)
        step = jax.jit(
            make_train_step(loss_fn, opt, grad_accum),
            in_shardings=(shardings, bs, NamedSharding(mesh, P())),
            out_shardings=(shardings, NamedSharding(mesh, P())),
            donate_argnums=(0,),
        )
        batch = {k: jax.device_put(v, bs[k]) for k, v in _batch().items()}
        init_params = jax.device_get(state.params)
        new_state, metrics = step(state, batch, sched)
    return new_state, jax.device_get(metrics), init_params


MESHES = {
    "dp": dict(data=8, stage=1, fsdp=1, tensor=1),
    "fsdp": dict(data=1, stage=1, fsdp=8, tensor=1),
    "tp": dict(data=1, stage=1, fsdp=1, tensor=8),
    "fsdp_tp": dict(data=2, stage=1, fsdp=2, tensor=2),
}

# Expected mesh PartitionSpecs, written out by hand from the tables' comments.
EXPECTED = {
    "dp": {},  # everything replicated
    "fsdp": {
        "embed": P(None, "fsdp"),
        "final_ln_scale": P("fsdp"),
        "final_ln_bias": P("fsdp"),
        "layers/ln1_scale": P(None, "fsdp"),
        "layers/ln1_bias": P(None, "fsdp"),
        "layers/ln2_scale": P(None, "fsdp"),
        "layers/ln2_bias": P(None, "fsdp"),
        "layers/q": P(None, "fsdp", None, None),
        "layers/k": P(None, "fsdp", None, None),
        "layers/v": P(None, "fsdp", None, None),
        "layers/o": P(None, None, None, "fsdp"),
        "layers/wi": P(None, "fsdp", None),
        "layers/wo": P(None, None, "fsdp"),
    },
    "tp": {
        "embed": P("tensor", None),
        "layers/q": P(None, None, "tensor", None),
        "layers/k": P(None, None, "tensor", None),
        "layers/v": P(None, None, "tensor", None),
        "layers/o": P(None, "tensor", None, None),
        "layers/wi": P(None, None, "tensor"),
        "layers/wo": P(None, "tensor", None),
    },
    "fsdp_tp": {
        "embed": P("tensor", "fsdp"),
        "final_ln_scale": P("fsdp"),
        "final_ln_bias": P("fsdp"),
        "layers/ln1_scale": P(None, "fsdp"),
        "layers/ln1_bias": P(None, "fsdp"),
        "layers/ln2_scale": P(None, "fsdp"),
        "layers/ln2_bias": P(None, "fsdp"),
        "layers/q": P(None, "fsdp", "tensor", None),
        "layers/k": P(None, "fsdp", "tensor", None),
        "layers/v": P(None, "fsdp", "tensor", None),
        "layers/o": P(None, "tensor", None, "fsdp"),
        "layers/wi": P(None, "fsdp", "tensor"),
        "layers/wo": P(None, "tensor", "fsdp"),
    },
}


def _flat(tree):
    return {
        "/".join(str(k.key) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _normalize(spec, ndim):
    return tuple(spec) + (None,) * (ndim - len(tuple(spec)))


@pytest.fixture(scope="module")
def reference():
    return _one_step(dict(data=1, stage=1, fsdp=1, tensor=1), "fsdp_tp", jax.devices()[:1])


@pytest.mark.parametrize("strategy", list(MESHES))
def test_sharded_step_matches_single_device(strategy, reference):
    ref_state, ref_metrics, init = reference
    state, metrics, _ = _one_step(MESHES[strategy], strategy)
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
    ref_params, params = _flat(jax.device_get(ref_state.params)), _flat(state.params)
    init = _flat(init)
    for name, p in params.items():
        np.testing.assert_allclose(
            np.asarray(p), ref_params[name], rtol=1e-5, atol=1e-7, err_msg=name
        )
        delta, ref_delta = np.asarray(p) - init[name], ref_params[name] - init[name]
        assert np.abs(ref_delta).max() > 0, name
        np.testing.assert_allclose(
            delta, ref_delta, rtol=1e-4, atol=1e-4 * np.abs(ref_delta).max(), err_msg=name
        )
        expected = EXPECTED[strategy].get(name, P())
        assert _normalize(p.sharding.spec, p.ndim) == _normalize(expected, p.ndim), name
    # Adam moments are sharded like their parameters.
    mu = _flat(state.opt_state[1][0].mu)
    for name, m in mu.items():
        assert _normalize(m.sharding.spec, m.ndim) == _normalize(
            params[name].sharding.spec, m.ndim
        ), name


def test_mesh_shape_errors():
    assert mesh_shape(dict(data=-1, stage=1, fsdp=2, tensor=2), 8) == (2, 1, 2, 2)
    with pytest.raises(ValueError, match="parallel.mesh"):
        mesh_shape(dict(data=3, stage=1, fsdp=1, tensor=1), 8)
    with pytest.raises(ValueError, match="at most one"):
        mesh_shape(dict(data=-1, stage=-1, fsdp=1, tensor=1), 8)


def test_indivisible_dimension_is_named():
    cfg = _model_cfg()
    cfg.n_heads = 4  # 4 heads cannot be split over tensor=8
    mesh = make_mesh(MESHES["tp"])
    rules = get_rules("tp")
    opt = make_optimizer(default_train_config())
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        with pytest.raises(ValueError, match=r"\['layers'\]\['[qkv]'\] dim 2 has size 4"):
            create_train_state(decoder, cfg, opt, mesh, rules, seed=0)


def test_batch_sharding_spec():
    mesh = make_mesh(MESHES["fsdp_tp"])
    bs = batch_shardings(("tokens",), mesh, get_rules("fsdp_tp"))
    assert _normalize(bs["tokens"].spec, 2) == (("data", "fsdp"), None)
    x = jax.device_put(jnp.zeros((8, 4), jnp.int32), bs["tokens"])
    assert x.addressable_shards[0].data.shape == (2, 4)


def test_sharded_gradient_accumulation_matches_single_device(reference):
    """2 microbatches of 4 rows on a 2x2x2 mesh give the single-device full-batch update."""
    ref_state, ref_metrics, _ = reference
    state, metrics, _ = _one_step(MESHES["fsdp_tp"], "fsdp_tp", grad_accum=2)
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    ref_params = _flat(jax.device_get(ref_state.params))
    for name, p in _flat(state.params).items():
        np.testing.assert_allclose(np.asarray(p), ref_params[name], rtol=1e-5, atol=1e-7)
