r"""The one entry point: `python launch/run.py --config experiments/X.py[:args] --workdir DIR`.

Overrides: `--config.train.steps=100 --config.model.n_layers=...` (the config is locked, so a
mistyped key fails instead of being ignored).

The workdir may be local or remote (`--workdir=gs://bucket/runs/x`, through common/atomic.py and
Orbax). With several processes (a pod slice, a multi-node job) every host must see one workdir:
a local one is refused unless `--shared_workdir` says it is a shared mount (train/validate.py:
check_shared); the same for a catalog dataset's local `data.data_dir` and `--shared_data_dir`.

Exit codes: 0 done (or preempted with a checkpoint: rerun the same command to resume), 2 bad input
(one line `error: <field>...` on stderr, nothing written), 3 stopped on a non-finite loss or
gradient (`train.nan_policy=stop`), 1 anything else (a bug: traceback).
"""

import dataclasses
import os
import re
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

EXIT_BAD_INPUT, EXIT_NONFINITE = 2, 3

# Warnings that every sweep point would repeat and that say nothing wrong.
_EXPECTED = (
    "Using custom data configuration",  # TFDS, for every user glob or stdlib corpus
    "read_only=True",  # Orbax, opening a WSD trunk to branch from
    "Given directory is read only",
)


def _drop_expected_warnings(record) -> bool:
    return not any(s in str(record.msg) for s in _EXPECTED)


def define_flags(flag_values: flags.FlagValues, sys_argv: list[str] | None = None) -> dict:
    """Defines this CLI's flags on `flag_values`; returns their holders by name."""
    holders = {
        "config": config_flags.DEFINE_config_file(
            "config",
            None,
            "Experiment config file[:args].",
            lock_config=True,
            flag_values=flag_values,
            sys_argv=sys_argv,
        )
    }
    for define, name, default, help_ in (
        (
            flags.DEFINE_string,
            "workdir",
            None,
            "Run directory (checkpoints, metrics); default "
            "runs/<experiment>. Rerunning with the same workdir resumes.",
        ),
        (flags.DEFINE_bool, "dry_run", False, "Sweeps and studies: print the plan, train nothing."),
        (
            flags.DEFINE_string,
            "compile_cache",
            os.path.expanduser("~/.cache/scalelab/jax"),
            "JAX persistent compilation cache directory ('' disables it).",
        ),
        # Multi-process runs (parallel/distributed.py): unset = environment, SLURM or TPU VM.
        (
            flags.DEFINE_string,
            "coordinator_address",
            None,
            "Multi-process: host:port of process 0's coordinator.",
        ),
        (flags.DEFINE_integer, "num_processes", None, "Multi-process: process count."),
        (flags.DEFINE_integer, "process_id", None, "Multi-process: this process's index."),
        # With several processes every host must see one workdir (and one catalog data_dir).
        (
            flags.DEFINE_bool,
            "shared_workdir",
            False,
            "Multi-process: the local --workdir is a "
            "mount every host sees (NFS); a gs:// workdir needs no flag.",
        ),
        (
            flags.DEFINE_bool,
            "shared_data_dir",
            False,
            "Multi-process: the local data.data_dir "
            "of a catalog dataset is a mount every host sees (or the same copy on every host).",
        ),
    ):
        holders[name] = define(name, default, help_, flag_values=flag_values)
    return holders


@dataclasses.dataclass
class Args:
    config: object
    experiment: str
    workdir: str
    dry_run: bool
    compile_cache: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    shared_workdir: bool = False
    shared_data_dir: bool = False


def describe_flag_error(e: BaseException, argv: list[str]) -> str:
    """One line `<field>: <what to do>` for a command line that did not parse."""
    text = str(e)
    # ml_collections' unknown-key error: AttributeError("'stepz'\nDid you mean "steps" ...?").
    if isinstance(e, (AttributeError, KeyError)) or "Did you mean" in text:
        words = re.findall(r"\w+", text)
        key = words[0] if words else "?"
        override = next((a for a in argv if re.search(rf"\.{re.escape(key)}(=|$)", a)), key)
        field = override.split("=", 1)[0].lstrip("-").removeprefix("config.")
        hint = re.search(r"Did you mean \W*(\w+)", text)
        hint = f"; did you mean {hint.group(1)}?" if hint else ""
        return f"{field}: unknown config key{hint} (see the experiment's config)"
    m = re.match(r"flag --(config\.)?([\w.]+)=(.*?): (.*)", text, re.S)
    if m and "Error whilst parsing config file" in m.group(4):
        # get_config raised: its own message is the last line of the embedded traceback.
        lines = [s.strip() for s in m.group(4).splitlines() if s.strip()]
        last = lines[-1] if lines else m.group(4)
        return f"--config={m.group(3)}: {last.split(': ', 1)[-1]}"
    if m:
        field, value, why = m.group(2), m.group(3), m.group(4).splitlines()[0]
        return f"{field}={value!r} has the wrong type ({why}); pass a value of the field's type"
    if "--config" in text or "config file" in text:
        return f"--config: {' '.join(text.split())[:300]}"
    return " ".join(text.split())[:300]


def _check_config_file(argv: list[str]) -> None:
    """The experiment file of `--config FILE[:args]` exists (ml_collections only says so when the
    config is first read, as a traceback)."""
    from train.validate import ConfigError

    for i, arg in enumerate(argv[1:], start=1):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(("--config=", "-config=")):
            value = arg.split("=", 1)[1]
        else:
            continue
        path = value.partition(":")[0]
        if not os.path.isfile(path):
            raise ConfigError(
                f"--config={value}: no such file {path!r}; pass experiments/<name>.py[:args] "
                "(run from the repository root)"
            )


def parse(argv: list[str], flag_values: flags.FlagValues | None = None) -> Args:
    """Parses a command line (argv[0] is the program) into `Args`.

    Args:
      argv: the command line.
      flag_values: where the flags live (None: a fresh set, so tests can call this repeatedly).

    Raises:
      ConfigError: the command line or the config it names does not parse.
    """
    from train.validate import ConfigError

    _check_config_file(argv)
    if flag_values is None:
        flag_values = flags.FlagValues()
        holders = define_flags(flag_values, sys_argv=list(argv))
    else:
        holders = _HOLDERS
    try:
        flag_values(argv)
        config = holders["config"].value
        if config is None:
            raise ConfigError("--config: missing; pass --config experiments/<name>.py[:args]")
    except ConfigError:
        raise
    except Exception as e:  # absl, ml_collections and the experiment's get_config all raise here
        raise ConfigError(describe_flag_error(e, argv)) from e
    filename = config_flags.get_config_filename(flag_values["config"])
    experiment = filename.partition(".py:")[0]  # 'experiments/x.py:args' -> 'experiments/x.py'
    experiment += "" if experiment.endswith(".py") else ".py"
    stem = os.path.splitext(os.path.basename(experiment))[0]
    values = {name: h.value for name, h in holders.items() if name != "config"}
    values["workdir"] = values["workdir"] or os.path.join("runs", stem)
    return Args(config=config, experiment=experiment, **values)


def execute(args: Args) -> int:
    """Validates everything, then trains (or sweeps); returns the exit code."""
    import jax

    from parallel.distributed import initialize
    from studies.recipes import recipe_for
    from train.validate import ConfigError, check_run, check_shared

    try:  # before anything touches a JAX backend (validation counts devices)
        where = initialize(args.coordinator_address, args.num_processes, args.process_id)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    if jax.process_count() > 1 and jax.process_index() == 0:
        print(f"distributed: {where}", flush=True)
    config, workdir = args.config, args.workdir
    if not args.dry_run:  # before the training stack is even imported
        check_shared(
            workdir,
            config.get("data"),
            shared_workdir=args.shared_workdir,
            shared_data_dir=args.shared_data_dir,
        )
        check_run(config, workdir, config.get("kind", "train"))
        if config.get("kind", "train") == "train":
            try:  # the features the config asks for check their own blocks
                recipe = recipe_for(config)
            except ValueError as e:
                raise ConfigError(str(e)) from e
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from train.loop import NonFiniteError, train_and_evaluate

    resume = shlex.join(sys.argv) if sys.argv and sys.argv[0].endswith("run.py") else ""
    resume = resume or f"python launch/run.py --config {args.experiment} --workdir {workdir}"
    kind = config.get("kind", "train")
    try:
        if kind == "sweep":
            from studies.sweep import run_sweep

            fit = run_sweep(config, args.experiment, workdir, dry_run=args.dry_run)
            if fit.get("preempted"):
                print(f"preempted: the sweep stopped with its checkpoints; resume with: {resume}")
            return 0
        if kind == "study":
            from studies.stages import run_study
            from studies.sweep import load_experiment

            out = run_study(config, load_experiment(args.experiment), workdir, dry_run=args.dry_run)
            if out["preempted"]:
                print(f"preempted: the study stopped with its checkpoints; resume with: {resume}")
            return 0
        if args.dry_run:
            print(config)
            return 0
        summary = train_and_evaluate(config, workdir, recipe=recipe)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    if summary.get("preempted"):
        print(
            f"preempted at step {summary['step']}: checkpoint saved in {workdir}/checkpoints; "
            f"resume with: {resume}",
            flush=True,
        )
        return 0
    print(
        f"done: eval loss {summary.get('eval/loss', float('nan')):.4f} nats/token, "
        f"{summary.get('eval/bits_per_byte', float('nan')):.4f} bits/byte, "
        f"{summary['wall_s']:.0f} s; results in {workdir}"
    )
    return 0


def cli(argv: list[str], flag_values: flags.FlagValues | None = None) -> int:
    """Parses, validates and runs one command line; returns the exit code (2: bad input)."""
    from train.validate import ConfigError

    try:
        return execute(parse(argv, flag_values))
    except ConfigError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT


_HOLDERS: dict = {}  # the flags of the real command line (parse() with FLAGS uses these)


if __name__ == "__main__":
    # Orbax and TFDS log every file operation at INFO; keep the console for progress and results.
    logging.set_verbosity(logging.WARNING)
    logging.get_absl_logger().addFilter(_drop_expected_warnings)
    app.define_help_flags()  # --help, --helpfull
    _HOLDERS.update(define_flags(flags.FLAGS))
    sys.exit(cli(sys.argv, flags.FLAGS))
