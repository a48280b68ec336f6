"""Pipeline schedules: the bubble, and pipelined loss/gradients equal to the plain layer stack."""

import functools
import re

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from models import decoder
from models.sizes import default_model_config
from objectives.causal_lm import make_loss_fn
from parallel.mesh import make_mesh
from parallel.pipeline import Schedule, make_layer_stack, pipelined_apply
from parallel.rules import get_rules


def test_schedule_table_by_hand():
    # GPipe, 2 stages, 2 microbatches: stage 1 starts one iteration late and finishes one late.
    np.testing.assert_array_equal(Schedule(2, 2).table(), [[0, -1], [1, 0], [-1, 1]])
    # Circular, 2 stages, 2 microbatches, 2 repeats: items 2, 3 are microbatches 0, 1 again.
    np.testing.assert_array_equal(
        Schedule(2, 2, 2).table(), [[0, -1], [1, 0], [2, 1], [3, 2], [-1, 3]]
    )


@pytest.mark.parametrize(
    "P_, M, R", [(2, 1, 1), (2, 4, 1), (4, 4, 1), (4, 8, 1), (2, 2, 2), (4, 4, 2), (4, 6, 3)]
)
def test_bubble_matches_formula(P_, M, R):
    s = Schedule(P_, M, R)
    table = s.table()
    assert s.bubble() == pytest.approx((P_ - 1) / (R * M + P_ - 1), abs=1e-12)
    # Every stage does each of the R * M items exactly once, item k at stage s at iteration k + s.
    for stage in range(P_):
        np.testing.assert_array_equal(table[table[:, stage] >= 0, stage], np.arange(R * M))
    assert _dependencies_hold(table, M)
    assert f"bubble {s.bubble():.3f}" in s.describe()


def _dependencies_hold(table: np.ndarray, M: int) -> bool:
    """Data flow of a schedule table: stage s > 0 works at iteration t on what stage s - 1 did at
    t - 1, and item k >= M (the next repeat of microbatch k mod M) enters stage 0 only after item
    k - M left the last stage."""
    iterations, stages = table.shape
    for t in range(iterations):
        for s in range(1, stages):
            if table[t, s] >= 0 and (t == 0 or table[t - 1, s - 1] != table[t, s]):
                return False
    left = {int(k): t for t, k in enumerate(table[:, -1]) if k >= 0}
    for t, k in enumerate(table[:, 0]):
        if k >= M and not left[int(k) - M] < t:
            return False
    return True


def test_circular_schedules_exist_exactly_when_dependencies_hold():
    """Schedule accepts (P, M, R) if and only if its table respects the data flow."""
    for P_ in range(1, 5):
        for M in range(1, 7):
            for R in range(1, 4):
                raw = object.__new__(Schedule)  # the table without the constructor's check
                for name, value in (("stages", P_), ("microbatches", M), ("repeats", R)):
                    object.__setattr__(raw, name, value)
                ok = _dependencies_hold(raw.table(), M)
                try:
                    Schedule(P_, M, R)
                    accepted = True
                except ValueError:
                    accepted = False
                assert accepted == ok, (P_, M, R)


@pytest.mark.parametrize("P_, M, R", [(2, 2, 1), (4, 4, 1), (2, 4, 2), (4, 4, 2)])
def test_pipeline_stack_applies_layers_in_order(P_, M, R):
    """Affine layers x -> a_l x + b_l do not commute: the pipelined stack over a real `stage`
    mesh axis equals the sequential composition row by row, with the per-row side input."""
    L, B = 2 * P_ * R, 2 * M
    rng = np.random.default_rng(0)
    layers = {"a": rng.uniform(0.5, 1.5, (L, 3)), "b": rng.normal(size=(L, 3))}
    layers = jax.tree.map(lambda w: w.astype(np.float32), layers)
    x = rng.normal(size=(B, 3)).astype(np.float32)
    side = {"c": np.arange(B, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)}

    def layer_fn(h, p, side):
        return p["a"][None] * h + p["b"][None] + 0.01 * side["c"]

    expected = x.astype(np.float64)
    for i in range(L):
        expected = layers["a"][i] * expected + layers["b"][i] + 0.01 * side["c"]
    mesh = make_mesh({"data": -1, "stage": P_, "fsdp": 1, "tensor": 1})
    stack = make_layer_stack(Schedule(P_, M, R), loop="scan")
    with jax.set_mesh(mesh):
        out = jax.jit(stack, static_argnums=0)(layer_fn, layers, x, side)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


def test_schedule_errors():
    with pytest.raises(ValueError, match="microbatches=2 must be at least the stage count 4"):
        Schedule(4, 2, 2)
    with pytest.raises(ValueError, match="n_layers=6 is not divisible by stages x repeats"):
        from parallel.pipeline import check_pipeline

        check_pipeline(Schedule(2, 2, 2), 6, 8)


def _cfg(n_layers=8):
    cfg = default_model_config("tiny")
    cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff = n_layers, 32, 4, 64
    cfg.layer_loop = "scan"  # compile time independent of depth
    return cfg


def _batch(B=8, T=16):
    rng = np.random.default_rng(0)
    seg = np.ones((B, T), np.int32)
    seg[:, T // 2 :] = 2
    seg[1, -3:] = 0
    pos = np.concatenate([np.arange(T // 2)] * 2)[None].repeat(B, 0).astype(np.int32)
    tokens = rng.integers(1, 360, (B, T)).astype(np.int32)
    return {"tokens": tokens, "segment_ids": seg, "positions": pos}


@pytest.fixture(scope="module")
def reference():
    cfg = _cfg()
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    fn = jax.jit(jax.value_and_grad(make_loss_fn(cfg, decoder.apply), has_aux=True))
    (loss, _), grads = fn(params, _batch(), None)
    return params, float(loss), jax.device_get(grads)


CASES = {  # name: (stages, microbatches, repeats, mesh axes besides stage, rules, remat)
    "gpipe_P2_dp2_tp2": (2, 2, 1, dict(data=2, tensor=2), "fsdp_tp", "none"),
    "circular_P2_R2_dp2_tp2": (2, 2, 2, dict(data=2, tensor=2), "fsdp_tp", "none"),
    "gpipe_P4_dp2_remat": (4, 4, 1, dict(data=2), "dp", "full"),
    "circular_P4_R2_tp2": (4, 4, 2, dict(tensor=2), "tp", "none"),
    "gpipe_P2_fsdp2_tp2": (2, 4, 1, dict(fsdp=2, tensor=2), "fsdp_tp", "save_dots"),
}


# One case runs in the quick suite; the rest (~15 s of compile each here) are marked slow.
@pytest.mark.parametrize(
    "case", [c if i == 0 else pytest.param(c, marks=pytest.mark.slow) for i, c in enumerate(CASES)]
)
def test_pipeline_matches_unpipelined(case, reference):
    stages, M, R, axes, rules_name, remat = CASES[case]
    params, ref_loss, ref_grads = reference
    cfg = _cfg()
    cfg.remat = remat
    mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1, **axes, "stage": stages})
    rules = get_rules(rules_name, pipeline=True)
    stack = make_layer_stack(Schedule(stages, M, R), loop="scan")
    loss_fn = make_loss_fn(cfg, functools.partial(decoder.apply, layer_stack=stack))
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda: decoder.init(jax.random.key(0), cfg))
        specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
        shardings = jax.tree.map(
            lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P)
        )
        assert shardings["layers"]["wi"].spec[0] == "stage"
        fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        compiled = fn.lower(jax.device_put(params, shardings), _batch(), None).compile()
        (loss, _), grads = compiled(jax.device_put(params, shardings), _batch(), None)
    # Stages hand activations on with collective-permutes (the compiled step is pipelined).
    assert re.search(r"collective-permute(-start)?\(", compiled.as_text())
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5)
    flat = jax.tree_util.tree_leaves_with_path(jax.device_get(grads))
    for (path, g), g_ref in zip(flat, jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(
            g, g_ref, rtol=1e-5, atol=1e-6 * np.abs(g_ref).max(), err_msg=jax.tree_util.keystr(path)
        )


def test_pipelined_apply_checks_config():
    from experiments.gpt import get_config

    config = get_config("size=tiny,runlocal")
    config.parallel.mesh.update(data=2, stage=4)
    config.model.n_layers = 2
    config.train.grad_accum = 1
    mesh = make_mesh(config.parallel.mesh)
    with pytest.raises(ValueError, match="n_layers=2 is not divisible by stages x repeats = 4 x 1"):
        pipelined_apply(decoder, config, mesh, get_rules("dp", pipeline=True))
    config.model.n_layers = 4
    config.parallel.pipeline.microbatches = 8  # 8 rows / 8 microbatches = 1 row, data=2
    with pytest.raises(ValueError, match="rows per pipeline microbatch"):
        pipelined_apply(decoder, config, mesh, get_rules("dp", pipeline=True))
    config.parallel.pipeline.microbatches = 2
    schedule, _ = pipelined_apply(decoder, config, mesh, get_rules("dp", pipeline=True))
    assert (schedule.stages, schedule.microbatches, schedule.repeats) == (4, 2, 1)


@pytest.mark.slow
def test_run_train_step_pipelined_with_grad_accum(tmp_path):
    """Through `Run`: 2 stages x data 2 x tensor 2, 2 accumulation steps of 2 pipeline
    microbatches, remat on: the same update as the unpipelined 8-way data-parallel step."""
    from tests.helpers import small_config
    from train.loop import Run

    def one_step(**changes):
        config = small_config(tmp_path)
        config.model.n_layers = 2
        config.train.update(warmup_steps=0, eps=1e-3, grad_accum=2)
        config.data.batch_size = 16
        for key, value in changes.items():
            config.parallel.mesh[key] = value
        config.parallel.pipeline.microbatches = 2
        config.model.remat = "full"
        run = Run(config)
        with run.activate():
            batch = run.global_batch(_batch(16, 64))
            state, metrics = run.train_step(run.state, batch, run.schedule_args)
        return jax.device_get(state.params), jax.device_get(metrics), run

    ref_params, ref_metrics, _ = one_step(data=-1)
    params, metrics, run = one_step(data=2, stage=2, tensor=2)
    assert run.pipeline.describe().startswith("pipeline: gpipe, P=2 stages, M=2")
    for k in ("loss", "grad_norm", "tokens"):
        np.testing.assert_allclose(metrics[k], ref_metrics[k], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _encdec_case():
    from experiments.families import t5_model
    from models import encdec

    cfg = default_model_config("tiny")
    cfg.update(n_layers=4, d_model=32, n_heads=2, d_ff=64, vocab_size=64)
    t5_model(cfg, "1.1")  # relative position biases, gated MLP, untied output
    rng = np.random.default_rng(1)
    seg_in = np.ones((8, 12), np.int32)
    seg_in[:, 8:] = 2
    seg_out = np.ones((8, 6), np.int32)
    seg_out[:, 4:] = 2
    batch = {
        "inputs": rng.integers(1, 64, (8, 12)).astype(np.int32),
        "inputs_segment_ids": seg_in,
        "targets": rng.integers(1, 64, (8, 6)).astype(np.int32),
        "targets_segment_ids": seg_out,
    }

    def loss(params, batch, apply_fn):
        logits = apply_fn(params, batch, cfg).astype(np.float32)
        lse = jax.nn.logsumexp(logits, -1)
        picked = jax.numpy.take_along_axis(logits, batch["targets"][..., None], -1)[..., 0]
        return (lse - picked).mean()

    return encdec, cfg, batch, loss


@pytest.mark.slow
@pytest.mark.parametrize("stages, M, R", [(2, 2, 1), (2, 2, 2)])
def test_encdec_pipeline_matches_unpipelined(stages, M, R):
    """Both stacks of the T5 encoder-decoder pipelined on stage=2 x data=2 x tensor=2."""
    encdec, cfg, batch, loss = _encdec_case()
    params = nn.unbox(encdec.init(jax.random.key(0), cfg))
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: loss(p, batch, encdec.apply)))(
        params
    )
    stack = make_layer_stack(Schedule(stages, M, R), loop=cfg.layer_loop)
    apply_fn = functools.partial(encdec.apply, layer_stack=stack)
    mesh = make_mesh(dict(data=2, stage=stages, fsdp=1, tensor=2))
    rules = get_rules("fsdp_tp", pipeline=True)
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        boxed = jax.eval_shape(lambda: encdec.init(jax.random.key(0), cfg))
        specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
        shardings = jax.tree.map(
            lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P)
        )
        value, grads = jax.jit(jax.value_and_grad(lambda p: loss(p, batch, apply_fn)))(
            jax.device_put(params, shardings)
        )
    np.testing.assert_allclose(float(value), float(ref_loss), rtol=1e-5)
    flat = jax.tree_util.tree_leaves_with_path(jax.device_get(grads))
    for (path, g), g_ref in zip(flat, jax.tree.leaves(jax.device_get(ref_grads)), strict=True):
        np.testing.assert_allclose(
            g, g_ref, rtol=1e-5, atol=1e-6 * np.abs(g_ref).max(), err_msg=jax.tree_util.keystr(path)
        )
