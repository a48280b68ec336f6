"""Shared test fixtures: a small local corpus and a shrunken real config."""

import os
import sysconfig

from experiments.gpt import get_config

# XLA flag for test subprocesses: LLVM at -O0 compiles in about half the CPU time and computes the
# same values (the smoke sweep gave identical losses, 143 -> 105 s of CPU); see tests/conftest.py.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def make_corpus(root: str, n_files: int = 40) -> str:
    """Copies `n_files` stdlib modules into `root`; returns a glob over them."""
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted(f for f in os.listdir(stdlib) if f.endswith(".py"))[:n_files]
    os.makedirs(root, exist_ok=True)
    for name in names:
        with (
            open(os.path.join(stdlib, name), "rb") as src,
            open(os.path.join(root, name), "wb") as dst,
        ):
            dst.write(src.read())
    return os.path.join(root, "*.py")


def small_config(tmp_path, steps: int = 20):
    """The real `experiments/gpt.py` tiny config shrunk to seconds of work on a local corpus."""
    config = get_config("size=tiny,runlocal")
    config.data.glob = make_corpus(str(tmp_path / "corpus"))
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.val_fraction = 0.1
    config.data.seq_len = 64
    config.data.batch_size = 8
    config.model.n_layers = 1
    config.model.d_model = 64
    config.model.n_heads = 2
    config.model.d_ff = 256
    config.train.steps = steps
    config.train.grad_accum = 1  # 8 rows over 8 simulated devices
    config.train.log_every = 1
    config.train.eval_every = 10
    config.train.ckpt_every = 10
    config.train.eval_batches = 2
    config.train.peak_flops = 1e11  # skip measuring
    return config
