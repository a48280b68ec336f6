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
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Sweeps: print the grid and its estimated cost, train nothing."
)
_CACHE = flags.DEFINE_string(
    "compile_cache",
    os.path.expanduser("~/.cache/scalelab/jax"),
    "JAX persistent compilation cache directory ('' disables it).",
)


# Warnings that every sweep point would repeat and that say nothing wrong.
_EXPECTED = (
    "Using custom data configuration",  # TFDS, for every user glob or stdlib corpus
    "read_only=True",  # Orbax, opening a WSD trunk to branch from
    "Given directory is read only",
)


def _drop_expected_warnings(record) -> bool:
    return not any(s in str(record.msg) for s in _EXPECTED)


def main(argv):
    del argv
    import jax

    # Orbax and TFDS log every file operation at INFO; keep the console for progress and results.
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_logger().addFilter(_drop_expected_warnings)

    if _CACHE.value:
        jax.config.update("jax_compilation_cache_dir", _CACHE.value)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from train.loop import ConfigError, train_and_evaluate

    config = _CONFIG.value
    # 'experiments/x.py:args' -> 'experiments/x.py'
    experiment = config_flags.get_config_filename(flags.FLAGS["config"]).partition(".py:")[0]
    experiment += "" if experiment.endswith(".py") else ".py"
    stem = os.path.splitext(os.path.basename(experiment))[0]
    workdir = _WORKDIR.value or os.path.join("runs", stem)
    try:
        if "sweep" in config:
            from launch.sweep import run_sweep

            run_sweep(config, experiment, workdir, dry_run=_DRY_RUN.value)
            return
        if _DRY_RUN.value:
            print(config)
            return
        if "distill" in config:  # a student trained against a teacher run (train/distill.py)
            from train.distill import distill_and_evaluate

            summary = distill_and_evaluate(config, workdir)
        else:
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
