"""Accelerator presets: each builds, passes the config checks for its slice, has its published
size, and its mesh divides its slice (no compiles here: docs/presets.py compiles them)."""

import math

import pytest

from aot.slices import parse_slice
from experiments.common import accelerator_presets
from launch.cluster import load_config
from models.counting import count_params
from parallel.mesh import AXES, mesh_shape
from train.validate import check_config

PRESETS = accelerator_presets()

# Published parameter counts: GPT-3 Table 2.1; Llama 3.2 1B (1.24B), Llama 3 8B (8.0B) and 70B
# (70.6B); T5 v1.1 XL and XXL as released (2.85B and 11.1B: the "3B" and "11B" names round
# them); BERT-large (340M).
PUBLISHED = {
    "experiments/gpt3.py:size=125m": 125e6,
    "experiments/gpt3.py:size=350m": 350e6,
    "experiments/gpt3.py:size=760m": 760e6,
    "experiments/gpt3.py:size=1.3b": 1.3e9,
    "experiments/gpt3.py:size=2.7b": 2.7e9,
    "experiments/gpt3.py:size=6.7b": 6.7e9,
    "experiments/gpt3.py:size=13b": 13e9,
    "experiments/gpt3.py:size=175b": 175e9,
    "experiments/llama.py:size=1b": 1.24e9,
    "experiments/llama.py:size=8b": 8.0e9,
    "experiments/llama.py:size=8b,target=8xh100": 8.0e9,
    "experiments/llama.py:size=70b": 70.6e9,
    "experiments/llama.py:size=70b,target=64xh100": 70.6e9,
    "experiments/t5.py:size=xl": 2.85e9,
    "experiments/t5.py:size=xxl": 11.1e9,
    "experiments/bert.py:size=bert-large": 340e6,
}


def test_every_published_model_has_a_preset():
    names = {f"{path}:{arg}" for path, arg, _ in PRESETS}
    assert set(PUBLISHED) <= names


@pytest.mark.parametrize(("path", "arg", "slice_name"), PRESETS, ids=[p[1] for p in PRESETS])
def test_preset_fits_its_slice_on_paper(path, arg, slice_name):
    config = load_config(f"{path}:{arg}", [])
    slice_ = parse_slice(slice_name)
    check_config(config, n_devices=slice_.total_chips)
    sizes = dict(zip(AXES, mesh_shape(config.parallel.mesh, slice_.total_chips), strict=True))
    assert math.prod(sizes.values()) == slice_.total_chips
    assert config.train.peak_flops == slice_.chip.peak_flops
    m = config.model
    assert (m.layer_loop, m.dtype, m.loss_dtype) == ("scan", "bfloat16", "float32")
    # The platform's fused attention kernel, except where the model cannot use it (T5's
    # relative position bias is added to the logits, which splash does not take).
    kernel = "splash" if slice_.chip.platform == "tpu" else "cudnn"
    assert m.attention_impl == (kernel if m.positions != "relative" else "xla")
    published = PUBLISHED.get(f"{path}:{arg}")
    if published is not None:
        total = count_params(m)["total"]
        assert abs(total / published - 1) < 0.03, (total, published)


def test_llama_target_selects_its_plan():
    tpu = load_config("experiments/llama.py:size=70b", [])
    gpu = load_config("experiments/llama.py:size=70b,target=64xh100", [])
    assert tpu.train.peak_flops == parse_slice("v5p-512").chip.peak_flops
    assert gpu.train.peak_flops == parse_slice("64xh100").chip.peak_flops
    assert gpu.parallel.mesh.tensor == 8 and gpu.train.grad_accum == 64
    # An unplanned slice keeps the size's first plan with that chip's peak.
    other = load_config("experiments/llama.py:size=8b,target=v5p-128", [])
    assert other.train.grad_accum == 16
    assert other.train.peak_flops == parse_slice("v5p-128").chip.peak_flops
