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
