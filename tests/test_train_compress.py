"""Compression fine-tunes on the one loop (QAT and held pruning masks, resumed too), every method on
a trained checkpoint with its report, and the two studies end to end."""

import json

import jax
import numpy as np
import pytest

from compress.lowrank import DEFAULT_TARGETS
from compress.magnitude import magnitude_masks, prunable_spec, sparsity_of
from compress.measure import Evaluator, load_compressed, measure
from compress.methods import compress
from compress.quant import quant_spec, quantize
from compress.study import finetune_stage, study_config
from experiments import compress_ckpt, prune_curve
from models import decoder
from studies.recipes import recipe_for
from studies.stages import run_study
from tests.helpers import small_config
from train.checkpoint import load_params
from train.loop import read_run_config as load_config
from train.loop import train_and_evaluate
from train.metrics import read_metrics


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained run (8 steps of the shrunken real config)."""
    tmp = tmp_path_factory.mktemp("compress")
    config = small_config(tmp, steps=8)
    workdir = str(tmp / "source")
    train_and_evaluate(config, workdir, recipe=recipe_for(config))
    return workdir


def _finetune(source, workdir, steps=3, stop_at=None, **kw):
    study = study_config(source=source, eval_batches=1, finetune={"steps": steps, "lr": 1e-2})
    config = finetune_stage("ft", study, load_config(source), source, **kw).config
    with config.unlocked():
        config.train.weight_decay = 0.0  # every change in the weights comes from a gradient
        config.train.eval_every = config.train.ckpt_every = 1
    summary = train_and_evaluate(config, workdir, stop_at=stop_at, recipe=recipe_for(config))
    return config, summary


def test_qat_finetune_on_the_loop_trains_what_int3_deploys(source, tmp_path):
    config, summary = _finetune(source, str(tmp_path / "qat"), quant=(3, 0))
    before, tuned = load_params(source), load_params(str(tmp_path / "qat"))
    spec = quant_spec(decoder, config.model)
    evaluator = Evaluator(config, eval_batches=1)
    cfg, q, info = compress("int4", config.model, tuned, bits=3)
    flips = 0
    for key in ("q", "k", "v", "o", "wi", "wo"):
        # Gradients passed the rounding (straight-through) and moved every matrix...
        assert np.abs(tuned["layers"][key] - before["layers"][key]).max() > 1e-4, key
        # ...and the deployed tree is the tuned weights on the 3-bit grid, every output channel
        # reaching +-3 (its scale is max|w| / 3).
        levels = np.abs(np.asarray(q["layers"][key]["int8"]))
        assert levels.max() == 3 and (levels.max(axis=spec["layers"][key]) == 3).all(), key
        q_before = np.asarray(quantize(before["layers"][key], spec["layers"][key], 3)[0])
        flips += int((q_before != q["layers"][key]["int8"]).sum())
    assert flips > 0  # weights crossed rounding boundaries: the grid values changed too
    # The loop evaluated the fake-quantized model: exactly the int3 tree's loss, not the f32 one.
    deployed = evaluator.evaluate(q, cfg)["loss"]
    f32 = evaluator.evaluate(tuned, cfg)["loss"]
    assert abs(summary["eval/loss"] - deployed) < 1e-5 < abs(summary["eval/loss"] - f32) - 1e-5


@pytest.fixture(scope="module")
def pruned(source, tmp_path_factory):
    """A 4-step fine-tune of `source` with 50% magnitude masks held."""
    workdir = str(tmp_path_factory.mktemp("pruned") / "full")
    config, _ = _finetune(source, workdir, steps=4, sparsity=0.5)
    return config, workdir


def test_pruned_finetune_holds_masks(source, pruned):
    config, workdir = pruned
    before, full = load_params(source), load_params(workdir)
    prunable = prunable_spec(decoder, config.model)
    masks = magnitude_masks(before, prunable, 0.5, "global")  # one-shot masks of the source
    for w0, w, m in zip(*(jax.tree.leaves(t) for t in (before, full, masks)), strict=True):
        w0, w, m = np.asarray(w0), np.asarray(w), np.asarray(m)
        assert np.all(w[~m] == 0.0)  # pruned weights stay exactly zero through the loop
        if not (m.all() or (~m).all()):
            assert np.any(w[m] != w0[m])  # the kept ones trained
    assert abs(sparsity_of(full, prunable) - 0.5) < 1e-3
    rows = read_metrics(f"{workdir}/metrics.jsonl")
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4]


@pytest.mark.slow
def test_pruned_finetune_resumes_exactly(source, pruned, tmp_path):
    _finetune(source, str(tmp_path / "cut"), steps=4, sparsity=0.5, stop_at=2)
    _finetune(source, str(tmp_path / "cut"), steps=4, sparsity=0.5)  # resumed from step 2
    full, resumed = load_params(pruned[1]), load_params(str(tmp_path / "cut"))
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_every_method_reports(source):
    config = load_config(source)
    params = load_params(source)
    evaluator = Evaluator(config, eval_batches=1)
    base = measure(params, config.model, evaluator)
    for method in ("int8", "w8a8"):
        cfg, q, info = compress(method, config.model, params)
        m = measure(q, cfg, evaluator, info["act_bits"])
        # Stored arrays: int8 + per-channel scales against f32 (deterministic).
        assert m["param_bytes"] < 0.3 * base["param_bytes"]
        assert abs(m["loss"] / base["loss"] - 1) < 0.01 and m["loss"] != base["loss"]
        assert m["params"] == base["params"] and m["flops_per_token"] == base["flops_per_token"]
    cfg, s, info = compress("structured", config.model, params, evaluator, keep_heads=1,
                            keep_ff=128)  # fmt: skip
    m = measure(s, cfg, evaluator)
    assert (cfg.n_heads, cfg.d_ff) == (1, 128) and m["flops_per_token"] < base["flops_per_token"]
    # Low rank computes the dense model with each target replaced by its rank-8 truncated SVD.
    cfg, low, info = compress("lowrank", config.model, params, rank=8)
    m = measure(low, cfg, evaluator)
    assert info["ranks"] == dict.fromkeys(DEFAULT_TARGETS, 8)
    truncated = {**params, "layers": dict(params["layers"])}
    for key in DEFAULT_TARGETS:
        w = np.asarray(params["layers"][key], np.float64)
        n_in = int(np.prod(low["layers"][key]["a"].shape[1:-1]))
        u, sv, vt = np.linalg.svd(w.reshape(w.shape[0], n_in, -1), full_matrices=False)
        best = np.einsum("lir,lr,lro->lio", u[..., :8], sv[:, :8], vt[:, :8])
        truncated["layers"][key] = best.reshape(w.shape).astype(np.float32)
    np.testing.assert_allclose(m["loss"], evaluator.evaluate(truncated, config.model)["loss"],
                               rtol=1e-5)  # fmt: skip
    assert m["params"] < base["params"] and m["flops_per_token"] < base["flops_per_token"]
    with pytest.raises(ValueError, match="unknown"):
        compress("zip", config.model, params)


@pytest.mark.slow
def test_studies_write_checkpoints_rows_reports_and_plot(source, tmp_path):
    config = compress_ckpt.get_config(
        f"source={source},method=w4a8,bits=3,act_bits=4,qat,finetune_steps=2,eval_batches=1"
    )
    out = run_study(config, compress_ckpt, str(tmp_path / "w3a4"))
    row = out["rows"]["compress"]
    cfg, params = load_compressed(row["out"])
    assert (cfg.quant.weight_bits, cfg.quant.act_bits) == (0, 4)
    assert np.abs(np.asarray(params["layers"]["wi"]["int8"])).max() == 3
    # The QAT run evaluated what was deployed: the int3 weights with int4 activations.
    assert abs(out["rows"]["finetune"]["eval/loss"] - row["loss"]) < 1e-5
    assert "loss_tuned_f32" in row and (tmp_path / "w3a4" / "report.md").exists()
    config = prune_curve.get_config(f"source={source},keep_heads=1,keep_ff=128,eval_batches=1")
    config.sparsities, config.finetune_at, config.finetune.steps = (0.0, 0.5), (0.5,), 2
    out = run_study(config, prune_curve, str(tmp_path / "curve"))["rows"]
    assert abs(out["prune_50"]["measured_sparsity"] - 0.5) < 1e-3
    assert out["prune_50"]["loss_oneshot"] > out["prune_00"]["loss_oneshot"]
    assert {"finetune_50", "structured_finetune"} <= set(out) and "finetune_00" not in out
    assert (tmp_path / "curve" / "loss_vs_sparsity.png").stat().st_size > 0
    text = (tmp_path / "curve" / "report.md").read_text()
    assert f"{out['finetune_50']['eval/loss']:.4f}" in text
    lines = (tmp_path / "curve" / "results.jsonl").read_text().splitlines()
    assert len([json.loads(x) for x in lines]) == len(out)
