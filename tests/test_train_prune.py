"""Magnitude masks (exact counts, global and per layer) and the masking optimizer: pruned weights
stay exactly zero through AdamW steps with weight decay, and its state shards like the params."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from compress.magnitude import apply_masks, magnitude_masks, prunable_spec, sparsity_of
from compress.masked import masked, sparsity_schedule
from models import decoder
from models.sizes import default_model_config
from parallel.mesh import make_mesh
from parallel.rules import get_rules
from train.optim import default_train_config, make_optimizer
from train.state import create_train_state


def _cfg():
    cfg = default_model_config("tiny")
    cfg.update({"n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64})
    return cfg


def _params(cfg):
    return nn.unbox(decoder.init(jax.random.key(0), cfg))


def test_magnitude_masks_count_and_order():
    cfg = _cfg()
    params = _params(cfg)
    prunable = prunable_spec(decoder, cfg)
    assert prunable["layers"]["wi"] and not prunable["embed"] and not prunable["layers"]["ln1_bias"]
    flat = np.concatenate(
        [np.abs(np.asarray(params["layers"][k])).ravel() for k in ("k", "o", "q", "v", "wi", "wo")]
    )
    masks = magnitude_masks(params, prunable, 0.6, "global")
    kept = np.concatenate(
        [np.asarray(masks["layers"][k]).ravel() for k in ("k", "o", "q", "v", "wi", "wo")]
    )
    n_pruned = int(0.6 * flat.size)
    assert (~kept).sum() == n_pruned
    assert flat[~kept].max() <= flat[kept].min()  # the smallest magnitudes go
    assert bool(masks["embed"].all())
    # Per layer: every layer slice of every matrix loses floor(0.6 n) weights.
    masks = magnitude_masks(params, prunable, 0.6, "layer")
    for key in ("q", "wo"):
        m = np.asarray(masks["layers"][key])
        for layer in range(cfg.n_layers):
            assert (~m[layer]).sum() == int(0.6 * m[layer].size)
    pruned = apply_masks(params, masks)
    assert abs(sparsity_of(pruned, prunable) - 0.6) < 1e-3


def test_sparsity_schedule_is_cubic():
    s = sparsity_schedule(0.8, start=10, end=30)
    assert float(s(0)) == 0.0 and float(s(10)) == 0.0
    np.testing.assert_allclose(float(s(20)), 0.8 * (1 - 0.5**3), rtol=1e-6)
    assert float(s(30)) == float(s(100)) == np.float32(0.8)


def test_masks_stay_fixed_through_optimizer_steps():
    cfg = _cfg()
    params = _params(cfg)
    prunable = prunable_spec(decoder, cfg)
    tcfg = default_train_config()
    tcfg.update({"lr": 1e-2, "warmup_steps": 0, "weight_decay": 0.1})
    opt = masked(make_optimizer(tcfg), prunable, 0.5, start=0, end=0)
    state = opt.init(params)
    update = jax.jit(opt.update)
    key = jax.random.key(1)
    first_masks = None
    for i in range(5):
        key, sub = jax.random.split(key)
        leaves, treedef = jax.tree.flatten(params)
        noise = jax.random.split(sub, len(leaves))
        # Large gradients everywhere, pruned weights included: Adam would move them.
        grads = jax.tree.unflatten(
            treedef, [jax.random.normal(k, w.shape) for k, w in zip(noise, leaves, strict=True)]
        )
        updates, state = update(grads, state, params, lr=tcfg.lr)
        new = optax.apply_updates(params, updates)
        masks = state.masks
        if first_masks is None:
            first_masks = masks
            assert abs(sparsity_of(new, prunable) - 0.5) < 1e-3
        for m0, m, w_old, w in zip(
            jax.tree.leaves(first_masks),
            jax.tree.leaves(masks),
            jax.tree.leaves(params),
            jax.tree.leaves(new),
            strict=True,
        ):
            np.testing.assert_array_equal(m0, m)  # the mask never changes after step 0
            assert np.all(np.asarray(w)[~np.asarray(m)] == 0.0)  # exactly zero, every step
            if i and np.asarray(m).any():
                assert np.any(np.asarray(w)[np.asarray(m)] != np.asarray(w_old)[np.asarray(m)])
        # Adam's moments of pruned weights stay zero: nothing is waiting to revive them.
        mu = state.inner[1][0].mu
        for m, mom in zip(jax.tree.leaves(masks), jax.tree.leaves(mu), strict=True):
            assert np.all(np.asarray(mom)[~np.asarray(m)] == 0.0)
        params = new


def test_schedule_prunes_monotonically_and_state_shards():
    cfg = _cfg()
    prunable = prunable_spec(decoder, cfg)
    tcfg = default_train_config()
    opt = masked(make_optimizer(tcfg), prunable, 0.75, start=0, end=4, every=2, scope="layer")
    mesh = make_mesh({"data": 2, "stage": 1, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(mesh), nn.logical_axis_rules(get_rules("fsdp_tp")):
        state, shardings = create_train_state(decoder, cfg, opt, mesh, get_rules("fsdp_tp"), 0)
    # The masks shard exactly like their parameters.
    assert shardings.opt_state.masks["layers"]["wi"] == shardings.params["layers"]["wi"]
    params, ostate = jax.device_get(state.params), jax.device_get(state.opt_state)
    update = jax.jit(opt.update)
    seen, zeros_before = [], None
    for _ in range(6):
        grads = jax.tree.map(jnp.ones_like, params)
        updates, ostate = update(grads, ostate, params, lr=tcfg.lr)
        params = optax.apply_updates(params, updates)
        seen.append(sparsity_of(params, prunable))
        zeros = np.asarray(params["layers"]["wo"]) == 0
        if zeros_before is not None:
            assert np.all(zeros[zeros_before])  # once pruned, always pruned
        zeros_before = zeros
    s = sparsity_schedule(0.75, 0, 4)
    np.testing.assert_allclose(seen[0], 0.0, atol=1e-3)
    np.testing.assert_allclose(seen[2], float(s(2)), atol=2e-3)
    np.testing.assert_allclose(seen[-1], 0.75, atol=2e-3)
