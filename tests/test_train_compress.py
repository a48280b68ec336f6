"""End to end on a shrunken real config: the training switches (pruning schedule, QAT) through
`train_and_evaluate`, then every compression method on the trained checkpoint with its report."""

import numpy as np
import pytest

from models import decoder
from models.prune import prunable_spec, sparsity_of
from tests.helpers import small_config
from train.compress import compress, measure
from train.loop import train_and_evaluate
from train.tune import Tools, load_config, load_params

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
    summary = train_and_evaluate(config, workdir)
    assert np.isfinite(summary["eval/loss"])
    return workdir


def test_training_switches_prune_and_quantize(trained):
    config = load_config(trained)
    params = load_params(trained)
    prunable = prunable_spec(decoder, config.model)
    assert abs(sparsity_of(params, prunable) - 0.5) < 1e-3  # masks held to the end
    assert config.model.weight_bits == 8


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
    cfg, low, info = compress("lowrank", config, params, tools, rank=8, finetune_steps=2)
    m = measure(low, cfg, tools, config.data.seq_len)
    assert info["ranks"]["wi"] == 8 and np.isfinite(m["loss"])
    assert m["params"] < base["params"]
    with pytest.raises(ValueError, match="unknown"):
        compress("zip", config, params, tools)


def test_harsher_quantization_with_qat_reports_the_tuned_f32_loss(trained):
    config = load_config(trained)
    with config.unlocked():
        config.model.weight_bits = 0
    params = load_params(trained)
    tools = Tools(config, eval_batches=1)
    cfg, q, info = compress("w4a8", config, params, tools, bits=3, qat=True, finetune_steps=1)
    assert (info["bits"], info["act_bits"], cfg.act_bits, cfg.weight_bits) == (3, 8, 8, 0)
    wi = q["layers"]["wi"]
    assert int(np.abs(np.asarray(wi["int8"])).max()) == 3  # 3 bits: levels -3..3
    # One step of fine-tuning is at the warmup's lr 0, so the tuned tree is the trained one:
    # loss_tuned_f32 is its unquantized loss, and 3-bit weights really change the loss.
    f32_loss = tools.evaluate(params, config.model)["loss"]
    np.testing.assert_allclose(info["loss_tuned_f32"], f32_loss, rtol=1e-5)
    assert abs(measure(q, cfg, tools, config.data.seq_len)["loss"] - f32_loss) > 1e-3
    with pytest.raises(ValueError, match="bits=9"):
        compress("int8", config, params, tools, bits=9)
