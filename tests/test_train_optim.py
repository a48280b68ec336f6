"""Tests for train/optim.py: schedules vs hand-computed values, decay mask, AdamW numerics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import optim


def _cfg(**overrides):
    cfg = optim.default_train_config()
    # Round numbers so the expected values below can be checked by hand.
    cfg.update(steps=1000, lr=1.0, warmup_steps=100, min_lr_ratio=0.1)
    cfg.update(overrides)
    return cfg


def _values(cfg, steps):
    schedule = optim.make_schedule(cfg)
    return [float(schedule(s)) for s in steps]


def test_default_config_is_declared_and_valid():
    """Every default field has a declaration (type, range) that its default satisfies, and the
    declaration rejects what the optimizer cannot use (train/validate.py walks it)."""
    from train.validate import ConfigError, check_fields

    cfg = optim.default_train_config()
    assert set(cfg) == set(optim.TRAIN_FIELDS)
    check_fields(cfg, optim.TRAIN_FIELDS, "train.")
    for field, value in [("weight_decay", -0.1), ("b2", 1.0), ("warmup_steps", 1001), ("lr", 0)]:
        bad = optim.default_train_config()
        bad[field] = value
        with pytest.raises(ConfigError, match=rf"^train\.{field}="):
            check_fields(bad, optim.TRAIN_FIELDS, "train.")


def test_cosine_schedule():
    # Warmup 0 -> 1 over 100 steps; cosine over 900 steps: halfway (550) is 0.1 + 0.9 * 0.5.
    got = _values(_cfg(schedule="cosine"), [0, 50, 100, 550, 1000, 2000])
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_wsd_linear_schedule():
    # decay_fraction 0.2: stable until 800, linear to 0.1 at 1000.
    got = _values(_cfg(schedule="wsd"), [50, 100, 500, 800, 900, 1000, 2000])
    np.testing.assert_allclose(got, [0.5, 1.0, 1.0, 1.0, 0.55, 0.1, 0.1], rtol=1e-6)


def test_wsd_one_minus_sqrt_schedule():
    # Progress 0.25 at 850 -> 1 - 0.5; progress 0.5 at 900 -> 1 - sqrt(0.5).
    got = _values(_cfg(schedule="wsd", decay_shape="1-sqrt"), [800, 850, 900, 1000])
    expected = [1.0, 0.1 + 0.9 * 0.5, 0.1 + 0.9 * (1 - math.sqrt(0.5)), 0.1]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_wsd_decay_start_override():
    got = _values(_cfg(schedule="wsd", decay_start=600), [599, 600, 800, 1000])
    np.testing.assert_allclose(got, [1.0, 1.0, 0.55, 0.1], rtol=1e-6)
    with pytest.raises(ValueError, match="decay_start"):
        optim.make_schedule(_cfg(schedule="wsd", decay_start=1001))


def test_constant_schedule_and_no_warmup():
    got = _values(_cfg(schedule="constant"), [0, 50, 100, 999, 5000])
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 1.0, 1.0], rtol=1e-6)
    assert _values(_cfg(schedule="constant", warmup_steps=0), [0]) == [1.0]


def test_schedule_is_jittable():
    schedule = optim.make_schedule(_cfg(schedule="wsd"))
    np.testing.assert_allclose(jax.jit(schedule)(jnp.int32(900)), 0.55, rtol=1e-6)


def test_unknown_schedule_names_field_and_choices():
    with pytest.raises(ValueError, match=r"train\.schedule.*cosine.*wsd.*constant"):
        optim.make_schedule(_cfg(schedule="linear"))
    with pytest.raises(ValueError, match=r"train\.decay_shape"):
        optim.make_schedule(_cfg(schedule="wsd", decay_shape="cubic"))


def test_decay_mask():
    params = {
        "embed": np.zeros((16, 4)),
        "layers": {  # Stacked along a leading L = 2 axis.
            "q": jax.ShapeDtypeStruct((2, 4, 2, 3), jnp.float32),
            "ln1_scale": np.zeros((2, 4)),
            "ln1_bias": np.zeros((2, 4)),
            "wi": np.zeros((2, 4, 8)),
        },
        "final_ln_scale": np.zeros((4,)),
        "unembed": np.zeros((4, 16)),
    }
    assert optim.decay_mask(params) == {
        "embed": True,
        "layers": {"q": True, "ln1_scale": False, "ln1_bias": False, "wi": True},
        "final_ln_scale": False,
        "unembed": True,
    }
    # Without the stacking rule, only raw rank counts.
    assert optim.decay_mask({"layers": {"scale": np.zeros((2, 4))}}, stacked_keys=()) == {
        "layers": {"scale": True}
    }


def _numpy_adamw(params, grads_fn, lrs, cfg, mask):
    """Reference AdamW: clip by global norm, Adam with bias correction, decoupled decay."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    p = {k: x.copy() for k, x in params.items()}
    for t, lr in enumerate(lrs, start=1):
        g = grads_fn(p)
        norm = np.sqrt(sum(np.sum(x**2) for x in g.values()))
        scale = min(1.0, cfg.clip_norm / norm) if cfg.clip_norm > 0 else 1.0
        for k in p:
            gk = g[k] * scale
            m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * gk
            v[k] = cfg.b2 * v[k] + (1 - cfg.b2) * gk**2
            direction = (m[k] / (1 - cfg.b1**t)) / (np.sqrt(v[k] / (1 - cfg.b2**t)) + cfg.eps)
            decay = cfg.weight_decay * p[k] if mask[k] else 0.0
            p[k] = p[k] - lr * (direction + decay)
    return p


def _run_optax(params, grads_fn, cfg, n):
    tx = optim.make_optimizer(cfg)
    p = {k: jnp.asarray(x) for k, x in params.items()}
    state, schedule = tx.init(p), optim.make_schedule(cfg)
    for t in range(n):
        updates, state = tx.update(grads_fn(p), state, p, lr=schedule(t))
        p = optax.apply_updates(p, updates)
    return {k: np.asarray(x, np.float64) for k, x in p.items()}


def test_adamw_matches_numpy_reference():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))}
    params = {k: x.astype(np.float32) for k, x in params.items()}
    target = {k: 5 * rng.normal(size=x.shape).astype(np.float32) for k, x in params.items()}
    # Quadratic 0.5 * c * (p - target)^2; far from the target so clipping is active.
    grads_fn = lambda p: {k: 3.0 * (p[k] - target[k]) for k in p}
    cfg = _cfg(schedule="cosine", steps=4, warmup_steps=1, lr=0.1, weight_decay=0.5)
    lrs = [float(optim.make_schedule(cfg)(t)) for t in range(3)]
    assert lrs[0] == 0.0 and lrs[1] > 0  # Warmup starts at 0; later steps do move.
    got = _run_optax(params, grads_fn, cfg, 3)
    want = _numpy_adamw(params, grads_fn, lrs, cfg, optim.decay_mask(params))
    for k in params:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5)
    norm0 = np.sqrt(sum(np.sum(x**2) for x in grads_fn(params).values()))
    assert norm0 > cfg.clip_norm


def test_masked_params_get_no_decay():
    params = {"w": np.ones((2, 2), np.float32), "scale": np.ones((2,), np.float32)}
    zero_grads = lambda p: {k: jnp.zeros_like(x) for k, x in p.items()}
    cfg = _cfg(schedule="constant", warmup_steps=0, lr=0.1, weight_decay=0.5, clip_norm=0.0)
    got = _run_optax(params, zero_grads, cfg, 1)
    # Zero gradient: Adam's direction is 0, so only the decoupled decay lr * wd * p remains.
    np.testing.assert_allclose(got["w"], 1.0 - 0.1 * 0.5, rtol=1e-6)
    np.testing.assert_array_equal(got["scale"], 1.0)
