"""Shared by the cluster launchers (launch/tpu.py, launch/slurm.py): commands and sweep jobs.

Every launcher builds its commands as argument lists first; `--dry_run` prints them (one per line,
shell-quoted, ready to paste) instead of running them.
"""

import os
import shlex
import subprocess
import sys

from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def execute(cmds: list[list[str]], dry_run: bool) -> None:
    """Prints each command; runs it too unless `dry_run` (stopping at the first failure)."""
    for cmd in cmds:
        print(shlex.join(cmd), flush=True)
        if not dry_run:
            subprocess.run(cmd, check=True)


def parse_with_overrides(parser, argv: list[str]):
    """`parser`'s arguments, with every unknown one a `--config.*` override (`args.overrides`)."""
    args, overrides = parser.parse_known_args(argv)
    args.overrides = [o for o in overrides if o != "--"]
    bad = [o for o in args.overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"unknown arguments {bad}; config overrides look like --config.train.steps=10")
    return args


def load_config(config_arg: str, overrides: list[str]):
    """The config `launch/run.py --config=config_arg overrides...` would train (same parser)."""
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    argv = ["launcher", f"--config={config_arg}", *overrides]
    saved, sys.argv = sys.argv, argv  # ml_collections reads the overrides from sys.argv
    try:
        fv(argv)
    finally:
        sys.argv = saved
    return fv.config


def sweep_jobs(config_arg: str, overrides: list[str], workdir: str) -> list[str]:
    """A sweep's independent jobs, each a `sweep.only` value (comma-separated point ids).

    A point trained from scratch (schedule=cosine) is its own job; with schedule=wsd the
    points of one model size share a trunk run, so they form one job (trunk, then branches).
    """
    from studies.sweep import load_experiment, plan

    config = load_config(config_arg, overrides)
    module = load_experiment(config_arg.partition(":")[0])
    pieces = plan(config, module.get_sweep(config), module.point_config, workdir)
    jobs: dict[str, list[str]] = {}
    for piece in pieces:
        if piece.point is not None:
            jobs.setdefault(piece.trunk or piece.point["id"], []).append(piece.point["id"])
    return [",".join(ids) for ids in jobs.values()]


def run_args(config_arg: str, overrides: list[str], workdir: str) -> list[str]:
    """The `launch/run.py` command line every process of a job runs."""
    return ["python", "launch/run.py", f"--config={config_arg}", f"--workdir={workdir}", *overrides]
