"""muP: initialisation, forward multipliers, per-group Adam LR and epsilon, coordinate check."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import decoder, mup
from models.sizes import default_model_config
from parallel.mesh import make_mesh
from parallel.rules import get_rules
from train.optim import default_train_config, make_optimizer
from train.state import create_train_state

BASE = 32


def width_config(width: int, parametrization: str, base_width: int):
    """A 2-layer decoder of `width` (4 heads, d_ff = 4 width, untied readout), SP or muP."""
    cfg = default_model_config("tiny")
    cfg.update(n_layers=2, d_model=width, d_ff=4 * width, n_heads=4, vocab_size=256)
    cfg.tie_embeddings = False
    cfg.mup.update(enabled=parametrization == "mup", base_width=base_width)
    return cfg


def _params(cfg, seed=0):
    return jax.jit(lambda key: nn.unbox(decoder.init(key, cfg)))(jax.random.key(seed))


def test_init_follows_the_table():
    sp = _params(width_config(2 * BASE, "sp", BASE))
    mp = _params(width_config(2 * BASE, "mup", BASE))
    std = width_config(BASE, "sp", BASE).init_std
    # Same keys, so muP's normal inits are SP's times a constant: 1/sqrt(m) for hidden weights.
    for name in ("k", "v", "wi"):
        np.testing.assert_allclose(mp["layers"][name], sp["layers"][name] / math.sqrt(2), rtol=1e-6)
        assert abs(float(np.std(mp["layers"][name])) / (std / math.sqrt(2)) - 1) < 0.05
    np.testing.assert_array_equal(mp["embed"], sp["embed"])  # input weights keep SP's std
    np.testing.assert_array_equal(mp["layers"]["ln1_scale"], sp["layers"]["ln1_scale"])
    assert not np.any(mp["layers"]["q"])  # zero-initialised (mup.zero_query, the default)
    np.testing.assert_array_equal(mp["unembed"], sp["unembed"])  # SP's init; 1/m in the forward
    zero_cfg = width_config(2 * BASE, "mup", BASE)
    zero_cfg.mup.zero_readout, zero_cfg.mup.zero_query = True, False
    zr = _params(zero_cfg)
    assert not np.any(zr["unembed"])
    np.testing.assert_allclose(zr["layers"]["q"], sp["layers"]["q"] / math.sqrt(2), rtol=1e-6)


def test_mup_at_base_width_is_sp_and_wider_scales_attention_and_logits():
    tokens = {"tokens": jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)}
    cfg_sp, cfg_mup = width_config(BASE, "sp", BASE), width_config(BASE, "mup", BASE)
    params = _params(cfg_sp)  # SP's init (nonzero q and readout) under both forwards
    np.testing.assert_allclose(
        decoder.apply(params, tokens, cfg_mup), decoder.apply(params, tokens, cfg_sp), rtol=1e-6
    )
    # At m = 2 muP scales logits by 1/2 and attention by sqrt(H/2)/H instead of 1/sqrt(H): the
    # same as SP with q scaled by 1/sqrt(2), times 1/2.
    cfg_sp, cfg_mup = width_config(2 * BASE, "sp", BASE), width_config(2 * BASE, "mup", BASE)
    params = _params(cfg_sp)
    q_scaled = jax.tree.map(lambda x: x, params)
    q_scaled["layers"]["q"] = params["layers"]["q"] / math.sqrt(2)
    np.testing.assert_allclose(
        decoder.apply(params, tokens, cfg_mup),
        0.5 * decoder.apply(q_scaled, tokens, cfg_sp),
        rtol=2e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("grad_scale", [1.0, 1e-9])
def test_first_adam_step_has_the_lr_and_epsilon_of_each_group(grad_scale):
    """Adam's first update is lr * g / (|g| + eps) (bias-corrected moments are g and g^2)."""
    m, lr, eps = 2.0, 1e-2, 1e-8
    cfg = width_config(int(m * BASE), "mup", BASE)
    tcfg = default_train_config()
    tcfg.lr, tcfg.schedule, tcfg.warmup_steps, tcfg.eps = lr, "constant", 0, eps
    tcfg.weight_decay, tcfg.clip_norm = 0.0, 0.0
    params = _params(cfg)
    grads = jax.tree.map(lambda p: jnp.full_like(p, grad_scale), params)
    opt = make_optimizer(tcfg, cfg)
    updates, _ = opt.update(grads, opt.init(params), params, lr=lr)
    g = grad_scale
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        name = path[-1].key
        lr_mult = 1 / m if name in ("q", "k", "v", "o", "wi", "wo") else 1.0
        expected = -lr * lr_mult * g / (g + eps / m)
        np.testing.assert_allclose(u, expected, rtol=1e-4, err_msg=name)
    # Under SP every group gets lr and eps unchanged.
    sp_opt = make_optimizer(tcfg)
    sp_updates, _ = sp_opt.update(grads, sp_opt.init(params), params, lr=lr)
    for u in jax.tree.leaves(sp_updates):
        np.testing.assert_allclose(u, -lr * g / (g + eps), rtol=1e-4)


def test_unknown_parameter_name_is_a_clear_error():
    cfg = width_config(BASE, "mup", BASE)
    with pytest.raises(ValueError, match="'w_mystery'.*mup.ROLES"):
        mup.lr_multipliers({"w_mystery": jnp.zeros((4, 4))}, cfg)


def test_sharded_train_state_builds_with_mup_optimizer():
    cfg = width_config(BASE, "mup", BASE)
    cfg.mup.zero_readout = True  # the muP init is applied to the sharded parameters too
    mesh = make_mesh(dict(data=2, stage=1, fsdp=2, tensor=2))
    rules = get_rules("fsdp_tp")
    opt = make_optimizer(default_train_config(), cfg)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, _ = create_train_state(decoder, cfg, opt, mesh, rules, seed=0)
    assert not np.any(jax.device_get(state.params["unembed"]))
