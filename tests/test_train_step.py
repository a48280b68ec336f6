"""Gradient accumulation: k microbatches of b give the update of one batch of k*b."""

import flax.linen as nn
import jax
import numpy as np

from models import decoder
from models.sizes import default_model_config
from objectives.causal_lm import make_loss_fn
from train.optim import default_train_config, make_optimizer, schedule_args
from train.state import TrainState
from train.step import make_eval_step, make_train_step


def test_grad_accumulation_equals_full_batch():
    cfg = default_model_config("tiny")
    cfg.n_layers = 1
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    tcfg = default_train_config()
    tcfg.warmup_steps, tcfg.eps = 0, 1e-3  # eps: keep Adam's first step proportional to g
    opt, sched = make_optimizer(tcfg), schedule_args(tcfg)
    rng = np.random.default_rng(0)
    B, T = 8, 32
    seg = np.ones((B, T), np.int32)
    seg[:3, 20:] = 2
    seg[5, 25:] = 0  # uneven token counts per microbatch: a mean of means would differ
    batch = {"tokens": rng.integers(104, 360, (B, T)).astype(np.int32), "segment_ids": seg}
    state = TrainState(
        step=np.int32(0),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    loss_fn = make_loss_fn(cfg, decoder.apply)
    outs = {}
    for k in (1, 2, 4):
        new_state, metrics = jax.jit(make_train_step(loss_fn, opt, grad_accum=k))(
            state, batch, sched
        )
        outs[k] = (jax.device_get(new_state.params), jax.device_get(metrics))
    for k in (2, 4):
        np.testing.assert_allclose(outs[k][1]["loss"], outs[1][1]["loss"], rtol=1e-5)
        assert outs[k][1]["tokens"] == outs[1][1]["tokens"]
        for a, b in zip(jax.tree.leaves(outs[k][0]), jax.tree.leaves(outs[1][0]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_eval_in_microbatches_sums_like_the_whole_batch():
    cfg = default_model_config("tiny")
    cfg.n_layers = 1
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    rng = np.random.default_rng(0)
    seg = np.ones((8, 32), np.int32)
    seg[5, 25:] = 0
    batch = {"tokens": rng.integers(104, 360, (8, 32)).astype(np.int32), "segment_ids": seg}
    loss_fn = make_loss_fn(cfg, decoder.apply)
    whole = jax.device_get(jax.jit(make_eval_step(loss_fn))(params, batch))
    for k in (2, 4):
        parts = jax.device_get(jax.jit(make_eval_step(loss_fn, microbatches=k))(params, batch))
        assert parts.keys() == whole.keys()
        assert parts["tokens"] == whole["tokens"] and parts["bytes"] == whole["bytes"]
        np.testing.assert_allclose(parts["nll_sum"], whole["nll_sum"], rtol=1e-5)


def test_every_aux_sum_is_accumulated_and_frozen_inputs_reach_the_loss():
    """The step sums every aux key its loss returns over microbatches (not only nll/tokens/bytes)
    and passes a frozen input tree as the loss's fourth argument."""
    import jax.numpy as jnp

    import objectives

    def loss_fn(params, batch, rng, frozen):
        x_B = batch["x"].astype(jnp.float32)
        err_B = (params["w"] * x_B - frozen["target"]) ** 2
        aux = {
            "nll_sum": err_B.sum(),
            "tokens": jnp.float32(x_B.shape[0]),
            "bytes": jnp.float32(x_B.shape[0]),
            "hit_sum": (err_B < 1.0).sum().astype(jnp.float32),
            "big_sum": (x_B > 4).sum().astype(jnp.float32),
            "big_count": jnp.float32(2 * x_B.shape[0]),
        }
        return err_B.mean(), aux

    tcfg = default_train_config()
    tcfg.warmup_steps = 0
    opt, sched = make_optimizer(tcfg), schedule_args(tcfg)
    params = {"w": np.float32(0.5)}
    state = TrainState(
        step=np.int32(0),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    x_B = np.arange(8, dtype=np.int32)
    target = np.float32(2.0)
    err_B = (0.5 * x_B - target) ** 2
    for k in (1, 4):
        step = jax.jit(make_train_step(loss_fn, opt, grad_accum=k, frozen=True))
        _, m = jax.device_get(step(state, {"x": x_B}, sched, {"target": target}))
        assert m["hit_sum"] == (err_B < 1.0).sum() and m["big_count"] == 16
        np.testing.assert_allclose(m["loss"], err_B.mean(), rtol=1e-6)
        out = objectives.summarize(m)
        assert out["hit"] == (err_B < 1.0).sum() / 8  # divided by tokens
        assert out["big"] == (x_B > 4).sum() / 16  # divided by its own count
