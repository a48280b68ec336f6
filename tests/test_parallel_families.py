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


# Exact layouts under fsdp_tp, written from the rule table's comments (embed -> fsdp; heads,
# kv_heads, mlp, vocab -> tensor; layers and head_dim whole): W[L, D_Z, N_Y, H] and so on.
_ = None
Q = P(_, "fsdp", "tensor", _)  # W_q, W_k, W_v[L, D_Z, N_Y, H]
O = P(_, "tensor", _, "fsdp")  # W_o[L, N_Y, H, D_Z]
W_IN, W_OUT = (
    P(_, "fsdp", "tensor"),
    P(_, "tensor", "fsdp"),
)  # W_in[L, D_Z, F_Y], W_out[L, F_Y, D_Z]
LAYER_D, HEAD_BIAS = P(_, "fsdp"), P(_, "tensor", _)  # norms, biases [L, D_Z]; b_q[L, N_Y, H]
D = P("fsdp")
EXPECTED_SPECS = {
    "encoder": {
        "emb_ln_bias": D,
        "emb_ln_scale": D,
        "embed": P("tensor", "fsdp"),  # E[V_Y, D_Z]
        "layers/k": Q,
        "layers/k_bias": HEAD_BIAS,
        "layers/ln1_bias": LAYER_D,
        "layers/ln1_scale": LAYER_D,
        "layers/ln2_bias": LAYER_D,
        "layers/ln2_scale": LAYER_D,
        "layers/o": O,
        "layers/o_bias": LAYER_D,
        "layers/q": Q,
        "layers/q_bias": HEAD_BIAS,
        "layers/v": Q,
        "layers/v_bias": HEAD_BIAS,
        "layers/wi": W_IN,
        "layers/wi_bias": P(_, "tensor"),
        "layers/wo": W_OUT,
        "layers/wo_bias": LAYER_D,
        "mlm_dense": P("fsdp", _),
        "mlm_dense_bias": D,
        "mlm_ln_bias": D,
        "mlm_ln_scale": D,
        "mlm_out_bias": P("tensor"),  # b[V_Y]
        "nsp": P("fsdp", _),
        "nsp_bias": P(_),
        "pooler": P("fsdp", _),
        "pooler_bias": D,
        "pos_embed": P(_, "fsdp"),
        "type_embed": P(_, "fsdp"),
    },
    "encdec": {
        "embed": P("tensor", "fsdp"),
        "unembed": P("fsdp", "tensor"),  # untied (T5 v1.1): W_U[D_Z, V_Y]
        **{
            f"{stack}/{k}": v
            for stack in ("encoder", "decoder")
            for k, v in {
                "final_ln_scale": D,
                "rel_bias": P(_, "tensor"),  # [buckets, N_Y]
                "layers/q": Q,
                "layers/k": Q,
                "layers/v": Q,
                "layers/o": O,
                "layers/ln1_scale": LAYER_D,
                "layers/ln2_scale": LAYER_D,
                "layers/wi_0": W_IN,
                "layers/wi_1": W_IN,
                "layers/wo": W_OUT,
            }.items()
        },
        **{f"decoder/layers/cross_{k}": Q for k in ("q", "k", "v")},
        "decoder/layers/cross_o": O,
        "decoder/layers/ln_cross_scale": LAYER_D,
    },
}
MESH_3D = dict(data=2, stage=1, fsdp=2, tensor=2)


def _specs(tree) -> dict:
    return {
        "/".join(str(k.key) for k in path): x.sharding.spec
        for path, x in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.mark.parametrize("family", ["encoder", "encdec"])
def test_parameter_and_optimizer_shardings_are_exact(family):
    """Every parameter (and both Adam moments) of the encoder and the encoder-decoder carries
    the PartitionSpec of the fsdp_tp table on a data x fsdp x tensor mesh."""
    cfg, *_ = _setup(family)
    mesh, rules = make_mesh(MESH_3D), get_rules("fsdp_tp")
    opt = make_optimizer(default_train_config())
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        state, _ = create_train_state(get_model(family), cfg, opt, mesh, rules, seed=0)
    assert _specs(state.params) == EXPECTED_SPECS[family]
    adam = next(s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: hasattr(x, "mu")))
    assert _specs(adam.mu) == _specs(adam.nu) == EXPECTED_SPECS[family]
    # The specs are real layouts: the vocab x embed table is cut into 2 x 2 blocks.
    embed = state.params["embed"]
    assert {s.data.shape for s in embed.addressable_shards} == {(192, 16)}


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
    if mesh.size > 1:  # the step's output keeps the layouts it was given
        assert _specs(new_state.params) == EXPECTED_SPECS[family]
    return jax.device_get(new_state.params), jax.device_get(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["encoder", "encdec"])
def test_sharded_step_matches_single_device(family):
    ref_params, ref_metrics = _one_step(
        family, dict(data=1, stage=1, fsdp=1, tensor=1), jax.devices()[:1]
    )
    params, metrics = _one_step(family, MESH_3D)
    assert np.isfinite(ref_metrics["loss"]) and ref_metrics["tokens"] > 0
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], ref_metrics["grad_norm"], rtol=1e-5)
    flat_ref = jax.tree_util.tree_leaves_with_path(ref_params)
    for (path, ref), got in zip(flat_ref, jax.tree.leaves(params), strict=True):
        np.testing.assert_allclose(
            got, ref, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path)
        )
