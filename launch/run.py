r"""The one entry point: `python launch/run.py --config experiments/X.py[:args] --workdir DIR`.

Overrides: `--config.train.steps=100 --config.model.size=...` (the config is locked, so a mistyped
key fails instead of being ignored).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file[:args].", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Run directory (checkpoints, metrics); default "
    "runs/<experiment>. Rerunning with the same workdir resumes.",
)
_CACHE = flags.DEFINE_string(
    "compile_cache",
    os.path.expanduser("~/.cache/scalelab/jax"),
    "JAX persistent compilation cache directory ('' disables it).",
)


def main(argv):
    del argv
    import jax

    # Orbax and TFDS log every file operation at INFO; keep the console for progress and results.
    logging.set_verbosity(logging.WARNING)

    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from train.loop import ConfigError, train_and_evaluate

    config = _CONFIG.value
    stem = os.path.splitext(
        os.path.basename(config_flags.get_config_filename(flags.FLAGS["config"]))
    )[0]
    workdir = _WORKDIR.value or os.path.join("runs", stem)
    try:
        summary = train_and_evaluate(config, workdir)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"done: eval loss {summary.get('eval/loss', float('nan')):.4f} nats/token, "
        f"{summary.get('eval/bits_per_byte', float('nan')):.4f} bits/byte, "
        f"{summary['wall_s']:.0f} s; results in {workdir}"
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
