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

# The longest files first (measured: seconds of one run each), so that with
# `-n 2 --dist loadfile` the last files to start are short ones and both workers finish together.
_LONG_FILES = (
    "test_studies_dpo.py",  # ~250 (slow tier only)
    "test_launch_sweep.py",  # ~220
    "test_parallel_distributed.py",  # ~210
    "test_aot.py",  # ~200
    "test_train_preemption.py",  # ~110
    "test_launch_run.py",  # ~70
    "test_scaling_parametric.py",  # ~60
    "test_train_families.py",  # ~60
    "test_parallel_pipeline.py",  # ~60
    "test_train_mixed_precision.py",  # ~60
    "test_scaling_fit.py",  # ~55
    "test_models_mup.py",  # ~45
    "test_data_corpus.py",  # ~40
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(_LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept
