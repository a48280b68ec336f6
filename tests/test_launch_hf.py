"""The import / export CLIs: HF dir -> Orbax checkpoint -> HF dir gives back the same tensors."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # a checkout without them skips, not errors
pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from hf import convert as hf  # noqa: E402
from hf import files as hf_io  # noqa: E402
from launch import hf_export, hf_import  # noqa: E402
from tests.hf_helpers import randomize, save  # noqa: E402
from train.checkpoint import load_state  # noqa: E402


def test_import_then_export_cli(tmp_path, capsys):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16)
    )
    src = save(randomize(model, seed=2), str(tmp_path / "hf"), "safetensors")
    ckpt = tmp_path / "ckpt"

    assert hf_import.main(["--hf_dir", src, "--out", str(ckpt)]) == 0
    with open(ckpt / "config.json") as f:
        assert json.load(f)["model"]["family"] == "decoder"
    saved = hf_io.flatten(load_state(str(ckpt / "checkpoints"))["params"])
    _, params = hf.load_hf(src)
    want = hf_io.flatten(params)
    assert saved.keys() == want.keys()
    assert all(np.array_equal(saved[k], want[k]) for k in want)

    assert hf_export.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "out")]) == 0
    original, exported = hf_io.read_weights(src), hf_io.read_weights(str(tmp_path / "out"))
    assert exported.keys() == original.keys()
    assert all(np.array_equal(exported[k], original[k]) for k in original)

    # A second import into the same directory refuses to overwrite it.
    assert hf_import.main(["--hf_dir", src, "--out", str(ckpt)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert hf_import.main(["--hf_dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "has no config.json" in capsys.readouterr().err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert hf_import.main(["--hf_dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "model_type='llama' is not supported" in capsys.readouterr().err
    assert hf_export.main(["--ckpt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "has no config.json" in capsys.readouterr().err


@pytest.mark.slow
def test_a_checkout_without_torch_skips_the_hf_tests(tmp_path):
    """With `torch` and `transformers` unimportable, the HF test modules are skipped at
    collection (importorskip), not collection errors."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("torch", "transformers"):
        (tmp_path / f"{name}.py").write_text(f"raise ImportError('no {name} here')\n")
    files = [
        "tests/test_models_hf_bert.py",
        "tests/test_models_hf_gpt2.py",
        "tests/test_models_hf_t5.py",
        "tests/test_launch_hf.py",
    ]
    env = dict(os.environ, PYTHONPATH=str(tmp_path), JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--co", "-rs", *files],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 5, text[-3000:]  # 5: nothing collected, and no errors
    assert "error" not in text.lower() and text.count("SKIPPED") == len(files), text[-3000:]
