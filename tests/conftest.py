"""Test set-up: 8 simulated CPU devices, fast compiles, strict rank promotion, repo root importable.

Most of the suite's time is XLA compiling small programs that then run for milliseconds, so:
- LLVM optimisation level 0 (`--xla_backend_optimization_level=0`) halves the CPU time of a
  compile-bound test file here (test_train_step + test_models_lora: 83 s -> 40 s of CPU) and does
  not change what XLA computes, only how well the machine code is optimised. Subprocess tests that
  set their own XLA_FLAGS compile as users do.
- One persistent compilation cache per test process: tests that train the same config twice
  (resume, preemption, families) compile it once (67 of 717 compiles in the train/parallel files).
"""

import atexit
import os
import shutil
import tempfile

# Must happen before JAX initialises its backends.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

_CACHE = tempfile.mkdtemp(prefix="scalelab-test-jax-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# The longest files first (measured: seconds of one full run at load 4-7), so that with
# `-n 3 --dist loadfile` the last files to start are short ones and the workers finish together.
_LONG_FILES = (
    "test_aot_fit.py",  # ~340
    "test_parallel_pipeline.py",  # ~260
    "test_aot.py",  # ~220
    "test_distill.py",  # ~125
    "test_parallel_distributed.py",  # ~115
    "test_launch_sweep.py",  # ~110
    "test_studies_mup.py",  # ~80
    "test_scaling_plan.py",  # ~80
    "test_train_preemption.py",  # ~50
    "test_studies_dpo.py",  # ~40
    "test_launch_run.py",  # ~35
    "test_models_attention_impl.py",  # ~30
    "test_train_finetune.py",  # ~25
    "test_studies_finetune.py",  # ~25
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
