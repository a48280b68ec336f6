"""experiments/gpt.py's nanoGPT architecture, and the nanoGPT benchmark's bad-input exit."""

import os
import subprocess
import sys

import pytest

from experiments import gpt
from models.counting import count_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nanogpt_params(L: int, D: int, V: int, T: int, bias: bool) -> int:
    """Parameters of nanoGPT's `GPT` (model.py), module by module, the tied lm_head once."""
    b = int(bias)
    ln = D + b * D  # LayerNorm weight (+ bias)
    block = ln + (3 * D * D + b * 3 * D) + (D * D + b * D)  # ln_1, c_attn, attn.c_proj
    block += ln + (4 * D * D + b * 4 * D) + (4 * D * D + b * D)  # ln_2, c_fc, mlp.c_proj
    return L * block + V * D + T * D + ln  # h, wte (= lm_head), wpe, ln_f


@pytest.mark.parametrize("arch,bias", [("nanogpt", True), ("nanogpt_nobias", False)])
def test_nanogpt_arch_has_nanogpts_parameters_and_switches(arch, bias):
    config = gpt.get_config(f"size=small,arch={arch}")
    m, T = config.model, config.data.seq_len
    counts = count_params(m)
    assert counts["total"] == _nanogpt_params(m.n_layers, m.d_model, m.vocab_size, T, bias)
    assert (m.positions, m.max_len, m.activation, m.norm_eps) == ("learned", T, "gelu_exact", 1e-5)
    assert m.norm_position == "pre" and m.tie_embeddings
    # the default architecture is untouched: rotary positions, no position table
    default = gpt.get_config("size=small").model
    assert default.positions == "rotary" and count_params(default)["total"] < counts["total"]


def test_an_unknown_arch_names_the_argument():
    with pytest.raises(ValueError, match="arch=gpt2: choose one of"):
        gpt.get_config("size=small,arch=gpt2")


def test_bench_without_a_nanogpt_checkout_exits_2_in_one_line(tmp_path):
    pytest.importorskip("torch")
    cmd = [sys.executable, "launch/bench_nanogpt.py", "--nanogpt", str(tmp_path), "--steps", "1"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --nanogpt {tmp_path}: no model.py")
