"""Encoder (masked LM + NSP) and encoder-decoder (span corruption) steps: sharded == one device."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import objectives
from data.tokenizer import ByteTokenizer
from experiments.families import bert_model, t5_model
from models import get_model
from models.sizes import default_model_config
from objectives.masked_lm import MaskedLMTransform
from objectives.span_corruption import SpanCorruptionTransform
from objectives.transforms import special_ids
from parallel.mesh import make_mesh
from parallel.rules import get_rules
from parallel.sharding import batch_shardings
from train.optim import default_train_config, make_optimizer, schedule_args
from train.state import create_train_state
from train.step import make_train_step

TOK = ByteTokenizer(num_sentinels=20)
IDS = special_ids(TOK)


def _setup(family):
    cfg = default_model_config("tiny")
    cfg.update(n_layers=1, d_model=32, n_heads=2, d_ff=64, vocab_size=384, max_len=32)
    rng = np.random.default_rng(0)
    tokens = rng.integers(TOK.offset, TOK.offset + 256, (8, 32)).astype(np.int32)
    seg = np.ones((8, 32), np.int32)
    seg[:, 20:] = 2
    seg[0, -3:] = 0
    raw = {"tokens": tokens, "segment_ids": seg, "positions": tokens * 0}
    if family == "encoder":
        bert_model(cfg)
        cfg.update(nsp_head=True, attn_dropout=0.1, resid_dropout=0.1)  # dropout from the rng
        transform, objective = MaskedLMTransform(IDS, nsp=True), "masked_lm"
    else:
        t5_model(cfg, "1.1")
        transform, objective = SpanCorruptionTransform(IDS, 32), "span_corruption"
    batch = transform(raw, np.random.default_rng(1))
    return cfg, transform.keys, batch, objective


def _one_step(family, mesh_cfg, devices=None):
    cfg, keys, batch, objective = _setup(family)
    model = get_model(family)
    mesh, rules = make_mesh(mesh_cfg, devices), get_rules("fsdp_tp")
    tcfg = default_train_config()
    tcfg.lr, tcfg.warmup_steps, tcfg.eps = 1e-2, 0, 1e-3  # see test_parallel_sharding.py
    opt, sched = make_optimizer(tcfg), schedule_args(tcfg)
    loss_fn = objectives.get_loss_fn(objective)(cfg, model.apply)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, shardings = create_train_state(model, cfg, opt, mesh, rules, seed=0)
        bs = batch_shardings(keys, mesh, rules)
        step = jax.jit(
            make_train_step(loss_fn, opt),
            in_shardings=(shardings, bs, NamedSharding(mesh, P())),
            out_shardings=(shardings, NamedSharding(mesh, P())),
        )
        new_state, metrics = step(
            state, {k: jax.device_put(v, bs[k]) for k, v in batch.items()}, sched
        )
    return jax.device_get(new_state.params), jax.device_get(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["encoder", "encdec"])
def test_sharded_step_matches_single_device(family):
    ref_params, ref_metrics = _one_step(
        family, dict(data=1, stage=1, fsdp=1, tensor=1), jax.devices()[:1]
    )
    params, metrics = _one_step(family, dict(data=2, stage=1, fsdp=2, tensor=2))
    assert np.isfinite(ref_metrics["loss"]) and ref_metrics["tokens"] > 0
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_params)
    for (path, ref), got in zip(flat_ref, jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(
            got, ref, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)
        )
