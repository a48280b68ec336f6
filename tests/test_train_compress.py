"""End to end on a shrunken real config: the training switches (pruning schedule, QAT) through
`train_and_evaluate`, then every compression method on the trained checkpoint with its report."""

import numpy as np
import pytest

from compress.lowrank import DEFAULT_TARGETS
from compress.magnitude import prunable_spec, sparsity_of
from compress.methods import compress, measure
from compress.quant import quant_spec, quantize
from compress.tune import Tools, load_config, load_params
from models import decoder
from studies.recipes import recipe_for
from tests.helpers import small_config
from train.loop import train_and_evaluate
from train.metrics import read_metrics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    config = small_config(tmp, steps=12)
    config.model.weight_bits = 8  # QAT switch: fake-quantized weights, STE gradients
    config.train.prune_sparsity = 0.5  # pruning switch: cubic ramp to 50% by step 8
    config.train.prune_end = 8
    config.train.prune_every = 2
    workdir = str(tmp / "run")
    summary = train_and_evaluate(config, workdir, recipe=recipe_for(config))
    assert np.isfinite(summary["eval/loss"])
    return workdir


def test_training_switches_prune_and_quantize(trained):
    config = load_config(trained)
    params = load_params(trained)
    prunable = prunable_spec(decoder, config.model)
    assert abs(sparsity_of(params, prunable) - 0.5) < 1e-3  # masks held to the end
    # QAT: the run evaluated its 8-bit fake-quantized weights. The recorded loss is that of the
    # stored weights under weight_bits=8, and measurably not their f32 loss (~1e-4 apart).
    recorded = [
        r["eval/loss"] for r in read_metrics(f"{trained}/metrics.jsonl") if "eval/loss" in r
    ]
    tools = Tools(config)
    q8 = tools.evaluate(params, config.model)["loss"]
    with config.unlocked():
        config.model.weight_bits = 0
    f32 = tools.evaluate(params, config.model)["loss"]
    assert abs(recorded[-1] - q8) < 1e-6 and abs(recorded[-1] - f32) > 2e-5, (recorded, q8, f32)


def test_every_method_reports(trained):
    config = load_config(trained)
    with config.unlocked():
        config.model.weight_bits = 0  # evaluate the stored f32 weights
    params = load_params(trained)
    tools = Tools(config, eval_batches=1)
    base = measure(params, config.model, tools, config.data.seq_len)
    cfg, q, _ = compress("int8", config, params, tools)
    m = measure(q, cfg, tools, config.data.seq_len)
    # Stored arrays: int8 + per-channel scales against f32 (deterministic). The files on disk
    # shrink less here, and by a different amount on each save (88-94 kB of 226 kB): Orbax
    # compresses the f32 tree, half zeros after pruning, and adds metadata of its own.
    assert m["param_bytes"] < 0.3 * base["param_bytes"]
    assert m["ckpt_bytes"] < 0.5 * base["ckpt_bytes"]
    assert abs(m["loss"] / base["loss"] - 1) < 0.01
    assert m["params"] == base["params"] and m["flops_per_token"] == base["flops_per_token"]
    cfg, s, info = compress("structured", config, params, tools, keep_heads=1, keep_ff=128)
    m = measure(s, cfg, tools, config.data.seq_len)
    assert (cfg.n_heads, cfg.d_ff) == (1, 128) and m["flops_per_token"] < base["flops_per_token"]
    # Low rank without tuning computes the dense model with each target replaced by its rank-8
    # truncated SVD (numpy), which is a different function from the trained one.
    cfg, low, info = compress("lowrank", config, params, tools, rank=8)
    m = measure(low, cfg, tools, config.data.seq_len)
    assert info["ranks"] == dict.fromkeys(DEFAULT_TARGETS, 8)
    truncated = {**params, "layers": dict(params["layers"])}
    for key in DEFAULT_TARGETS:
        w = np.asarray(params["layers"][key], np.float64)
        n_in = int(np.prod(low["layers"][key]["a"].shape[1:-1]))
        u, sv, vt = np.linalg.svd(w.reshape(w.shape[0], n_in, -1), full_matrices=False)
        best = np.einsum("lir,lr,lro->lio", u[..., :8], sv[:, :8], vt[:, :8])
        truncated["layers"][key] = best.reshape(w.shape).astype(np.float32)
    dense_loss = tools.evaluate(truncated, config.model)["loss"]
    np.testing.assert_allclose(m["loss"], dense_loss, rtol=1e-5)
    assert abs(m["loss"] - base["loss"]) > 1e-3
    assert m["params"] < base["params"] and m["flops_per_token"] < base["flops_per_token"]
    # Fine-tuning the factors (3 steps past the warmup's lr 0) lowers the held-out loss
    # (measured: 4.296 -> 4.248).
    cfg, tuned, info = compress("lowrank", config, params, tools, rank=8, finetune_steps=4)
    assert measure(tuned, cfg, tools, config.data.seq_len)["loss"] < m["loss"] - 0.02
    assert tuned["layers"]["wi"]["a"].shape == low["layers"]["wi"]["a"].shape
    with pytest.raises(ValueError, match="unknown"):
        compress("zip", config, params, tools)


def test_harsher_quantization_with_qat_reports_the_tuned_f32_loss(trained):
    config = load_config(trained)
    with config.unlocked():
        config.model.weight_bits = 0
        config.train.weight_decay = 0.0  # every change in the weights comes from a gradient
    params = load_params(trained)
    tools = Tools(config, eval_batches=1)
    cfg, q, info = compress("w4a8", config, params, tools, bits=3, qat=True, finetune_steps=3)
    assert (info["bits"], info["act_bits"], cfg.act_bits, cfg.weight_bits) == (3, 8, 8, 0)
    # The tuned tree, again (tuning is deterministic): 3 steps of fake-quant training, the
    # first at the warmup's lr 0, the others not.
    qat_cfg = cfg.copy_and_resolve_references()
    with qat_cfg.unlocked():
        qat_cfg.weight_bits = 3
    tuned, _ = tools.finetune(params, qat_cfg, steps=3, lr=3e-4)
    spec = quant_spec(decoder, config.model)
    flips = 0
    for key in ("q", "k", "v", "o", "wi", "wo"):
        before, after = params["layers"][key], tuned["layers"][key]
        # Gradients passed the rounding (straight-through) and moved every matrix...
        assert np.abs(after - before).max() > 1e-5, key
        # ...and what is stored is exactly the tuned weights on the 3-bit grid: levels -3..3,
        # each output channel reaching +-3 (its scale is max|w| / 3).
        q_ref, scale_ref = quantize(after, spec["layers"][key], bits=3)
        stored = q["layers"][key]
        np.testing.assert_array_equal(stored["int8"], np.asarray(q_ref))
        np.testing.assert_allclose(stored["scale"], np.asarray(scale_ref), rtol=1e-6)
        levels = np.abs(np.asarray(stored["int8"]))
        assert levels.max() == 3
        assert (levels.max(axis=spec["layers"][key]) == 3).all(), key
        flips += int((np.asarray(quantize(before, spec["layers"][key], bits=3)[0]) != q_ref).sum())
    assert flips > 0  # some weights crossed a rounding boundary: the grid values changed too
    f32_loss = tools.evaluate(params, config.model)["loss"]
    tuned_f32 = tools.evaluate(tuned, config.model)["loss"]
    np.testing.assert_allclose(info["loss_tuned_f32"], tuned_f32, rtol=1e-6)
    assert abs(tuned_f32 - f32_loss) > 1e-3  # tuning changed the model
    assert abs(measure(q, cfg, tools, config.data.seq_len)["loss"] - tuned_f32) > 1e-3
    with pytest.raises(ValueError, match="bits=9"):
        compress("int8", config, params, tools, bits=9)
