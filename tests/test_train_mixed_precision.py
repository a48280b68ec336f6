"""Mixed precision: bf16 activations and matmuls, f32 parameters, optimizer state, softmax, loss.

Each per-part switch (`model.dtype`, `model.attn_logits_dtype`, `model.loss_dtype`) is checked on
the jaxpr of the train step's value-and-grad: the dtypes of the matmuls, the attention softmax and
the loss's log-softmax are read off the traced equations.
"""

import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.tokenizer import ByteTokenizer
from models import decoder
from models.sizes import default_model_config
from objectives.causal_lm import make_loss_fn
from train.optim import default_train_config, make_optimizer, schedule_args
from train.state import TrainState
from train.step import make_train_step

STEPS, B, T = 60, 8, 64
REL_TOL = 0.02  # bf16 vs f32 loss after STEPS steps (measured here: 0.86% final, 0.33% mean)


def _text_batches():
    """Byte windows of real Python source, so the loss has something to learn."""
    with open(os.__file__, encoding="utf-8") as f:
        ids = ByteTokenizer().encode(f.read())
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(ids) - T, (STEPS, B))
    return [{"tokens": np.stack([ids[s : s + T] for s in row])} for row in starts]


@functools.cache
def _train(dtype, attn_logits_dtype="float32", loss_dtype="float32"):
    cfg = default_model_config("tiny")
    cfg.dtype = dtype
    cfg.attn_logits_dtype, cfg.loss_dtype = attn_logits_dtype, loss_dtype
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    tcfg = default_train_config()
    tcfg.lr, tcfg.warmup_steps, tcfg.steps = 3e-3, 5, STEPS
    opt, sched = make_optimizer(tcfg), schedule_args(tcfg)
    state = TrainState(
        step=np.int32(0),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    step = jax.jit(make_train_step(make_loss_fn(cfg, decoder.apply), opt))
    losses = []
    for batch in _text_batches():
        state, metrics = step(state, batch, sched)
        losses.append(float(metrics["loss"]))
    logits = decoder.apply(state.params, _text_batches()[0], cfg)
    return np.array(losses), state, logits


def test_bf16_matches_f32_and_keeps_f32_state():
    f32, _, _ = _train("float32")
    bf16, state, logits = _train("bfloat16")
    assert f32[-1] < 0.8 * f32[0]  # it learned something
    assert abs(bf16[-1] - f32[-1]) / f32[-1] < REL_TOL
    assert np.abs(bf16 - f32).mean() / f32.mean() < REL_TOL
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    floats = [x for x in jax.tree.leaves(state.opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)
    assert logits.dtype == jnp.float32


# Everything but parameters and optimizer state in bf16 (measured here: 1.02% final, 0.92% mean).
ALL_BF16_REL_TOL = 0.03


@pytest.mark.slow
def test_all_bf16_parts_match_f32_within_tolerance():
    f32, _, _ = _train("float32")
    bf16, state, logits = _train("bfloat16", "bfloat16", "bfloat16")
    assert abs(bf16[-1] - f32[-1]) / f32[-1] < ALL_BF16_REL_TOL
    assert np.abs(bf16 - f32).mean() / f32.mean() < ALL_BF16_REL_TOL
    assert logits.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))


def _eqn_dtypes(dtype, attn_logits_dtype, loss_dtype):
    """{(primitive, output shape): set of output dtype names} over the grad jaxpr, recursively."""
    cfg = default_model_config("tiny")
    cfg.dtype, cfg.attn_logits_dtype, cfg.loss_dtype = dtype, attn_logits_dtype, loss_dtype
    cfg.causal_blocks = 1  # one [B, K, T, S] attention per layer, the shape looked up below
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    batch = {"tokens": jnp.zeros((2, 16), jnp.int32)}
    grad_fn = jax.value_and_grad(make_loss_fn(cfg, decoder.apply), has_aux=True)
    out: dict = {}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                key = (eqn.primitive.name, tuple(v.aval.shape))
                out.setdefault(key, set()).add(str(v.aval.dtype))
            for p in eqn.params.values():
                for sub in p if isinstance(p, tuple | list) else (p,):
                    if isinstance(sub, jax.extend.core.ClosedJaxpr):
                        walk(sub.jaxpr)
                    elif isinstance(sub, jax.extend.core.Jaxpr):
                        walk(sub)

    walk(jax.make_jaxpr(grad_fn)(params, batch).jaxpr)
    return out


ATTN_SHAPE = (2, 4, 16, 16)  # [B, K, X, S]: tiny has 4 heads; batch 2, length 16
LOSS_SHAPE = (2, 15, 384)  # [B, T - 1, V]: the shifted logits the log-softmax sees


@pytest.mark.parametrize(
    "dtype,attn,loss",
    [
        ("float32", "float32", "float32"),
        ("bfloat16", "float32", "float32"),  # the default mixed precision
        ("bfloat16", "bfloat16", "float32"),
        ("bfloat16", "float32", "bfloat16"),
        ("float32", "bfloat16", "float32"),
    ],
)
def test_each_precision_switch_sets_the_dtype_of_its_part(dtype, attn, loss):
    d = _eqn_dtypes(dtype, attn, loss)
    # The softmax exponentials (forward) of attention and of the loss's log-softmax.
    assert d[("exp", ATTN_SHAPE)] == {attn}
    assert d[("exp", LOSS_SHAPE)] == {loss}
    # The attention logits matmul q.k^T (forward), and dP = dO.V^T in the backward: same shape.
    assert d[("dot_general", ATTN_SHAPE)] == {attn}
    # The weight matmuls: [B*T, D] @ [D, 3 * ...] etc. have 2-D outputs in the activation dtype.
    weight_dots = {k: v for k, v in d.items() if k[0] == "dot_general" and len(k[1]) == 2}
    assert weight_dots and all(v == {dtype} for k, v in weight_dots.items() if k[1][0] == 32)
    # The unembedding output (logits) is in the loss dtype.
    assert d[("dot_general", (2, 16, 384))] == {loss}
