r"""SLURM batch scripts for GPU clusters: one run, or a sweep as a job array plus a fit job.

  python launch/slurm.py --nodes=2 --gpus_per_node=8 --partition=gpu --time=04:00:00 \
      --config=experiments/gpt.py:size=base --workdir=runs/base [--dry_run] [-- OVERRIDES...]
  python launch/slurm.py --sweep --config=experiments/scaling.py:preset=accel \
      --workdir=runs/scaling [--dry_run]

Writes `<workdir>/slurm/*.sbatch` and submits them with `sbatch` (with `--dry_run`: prints the
scripts and the commands, writes and submits nothing). Every task runs the same
`launch/run.py` command; `parallel/distributed.py` reads the SLURM environment (`SLURM_NTASKS`,
`SLURM_PROCID`, the step's first node as the coordinator) and starts `jax.distributed`.
`--tasks=gpu` (default) starts one task per GPU (each sees its `SLURM_LOCALID` GPU);
`--tasks=node` one task per node that drives all its GPUs.

A sweep becomes a job array, one task per independent job (`launch/cluster.py:sweep_jobs`:
a point, or with schedule=wsd the points of one model size), each training only its points
(`--config.sweep.only=...`), and a fit job that starts when the array has finished
(`--dependency=afterany`), reruns the sweep command (finished points are found, not retrained)
and writes the fit and report.
"""

import argparse
import os
import shlex
import sys

from common import atomic
from launch.cluster import ROOT, execute, parse_with_overrides, run_args, sweep_jobs


def batch_script(args, command: list[str], *, array: list[str] | None = None) -> str:
    """The text of one sbatch script running `command` on every task."""
    per_node = args.gpus_per_node if args.tasks == "gpu" else 1
    name = args.job_name + ("-array" if array else "")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={args.nodes}",
        f"#SBATCH --ntasks-per-node={per_node}",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --cpus-per-task={args.cpus_per_task}",
        f"#SBATCH --time={args.time}",
        f"#SBATCH --output={os.path.abspath(args.workdir)}/slurm/%x-%j{'-%a' if array else ''}.out",
    ]
    if args.partition:
        lines.append(f"#SBATCH --partition={args.partition}")
    if args.account:
        lines.append(f"#SBATCH --account={args.account}")
    if array:
        lines.append(f"#SBATCH --array=0-{len(array) - 1}")
    lines += ["set -euo pipefail", f"cd {ROOT}"]
    if args.setup:
        lines.append(args.setup)
    body = shlex.join(command)
    if array:  # array task i trains job i's points
        lines.append("JOBS=(" + " ".join(shlex.quote(j) for j in array) + ")")
        body += ' "--config.sweep.only=${JOBS[$SLURM_ARRAY_TASK_ID]}"'
    lines.append(f"srun --kill-on-bad-exit=1 {body}")
    return "\n".join(lines) + "\n"


def plan_scripts(args) -> list[tuple[str, str]]:
    """`(file name, script)` pairs to submit in order."""
    command = run_args(args.config, args.overrides, args.workdir)
    if "://" not in args.workdir:
        # The scripts and every task's log live in the workdir too, so a SLURM workdir is a
        # mount all nodes share by construction; launch/run.py refuses a local workdir with
        # several processes unless told so.
        command.insert(command.index(f"--workdir={args.workdir}"), "--shared_workdir")
    if not args.sweep:
        return [(f"{args.job_name}.sbatch", batch_script(args, command))]
    jobs = sweep_jobs(args.config, args.overrides, args.workdir)
    return [
        (f"{args.job_name}-array.sbatch", batch_script(args, command, array=jobs)),
        (f"{args.job_name}-fit.sbatch", batch_script(_one_task(args), command)),
    ]


def _one_task(args):
    fit = argparse.Namespace(**vars(args))
    fit.nodes, fit.tasks, fit.job_name = 1, "node", args.job_name + "-fit"
    return fit


def submit_commands(args, paths: list[str]) -> list[list[str]]:
    if len(paths) == 1:
        return [["sbatch", paths[0]]]
    # The fit job waits for the whole array; `--parsable` prints the array's job id.
    return [
        [
            "bash",
            "-c",
            f"ID=$(sbatch --parsable {paths[0]}) && sbatch --dependency=afterany:$ID {paths[1]}",
        ]
    ]


def parse(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--job_name", default="scalelab")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus_per_node", type=int, default=8)
    p.add_argument("--tasks", choices=("gpu", "node"), default="gpu")
    p.add_argument("--cpus_per_task", type=int, default=8)
    p.add_argument("--time", default="24:00:00")
    p.add_argument("--partition", default="")
    p.add_argument("--account", default="")
    p.add_argument("--setup", default="", help="shell line run before srun, e.g. 'source venv'")
    p.add_argument("--sweep", action="store_true", help="job array, one task per sweep job")
    p.add_argument("--dry_run", action="store_true")
    args = parse_with_overrides(p, argv)
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    scripts = plan_scripts(args)
    directory = os.path.join(args.workdir, "slurm")
    paths = [os.path.join(directory, name) for name, _ in scripts]
    for path, (_, text) in zip(paths, scripts, strict=True):
        print(f"# {path}\n{text}")
        if not args.dry_run:
            os.makedirs(directory, exist_ok=True)
            atomic.write_text(path, text)
    execute(submit_commands(args, paths), args.dry_run)


if __name__ == "__main__":
    main(sys.argv[1:])
