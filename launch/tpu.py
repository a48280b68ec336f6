r"""Cloud TPU VMs with `gcloud compute tpus tpu-vm`: create, copy, install, run, logs, delete.

  python launch/tpu.py up --name=lm --zone=us-central2-b --accelerator_type=v4-32 \
      --config=experiments/gpt.py:size=base --workdir=gs://BUCKET/runs/base [--dry_run] \
      [-- OVERRIDES...]
  python launch/tpu.py logs --name=lm --zone=us-central2-b
  python launch/tpu.py delete --name=lm --zone=us-central2-b
  python launch/tpu.py sweep --name=sw --zone=... --accelerator_type=v4-8 \
      --config=experiments/scaling.py:preset=accel --workdir=runs/scaling [--dry_run]

Actions: `create` the VM (or pod slice); `copy` this checkout to every worker (a tarball without
.git and runs/); `install` requirements and jax[tpu] on every worker; `run` `launch/run.py` on
`--worker=all` in the background (nohup, output in ~/scalelab/run.log on each worker); `logs`
streams worker 0's log; `fetch` copies the workdir back from worker 0; `delete` the VM; `up` =
create, copy, install, run, logs (and `--delete_after`: fetch, delete). On the VM, every worker
runs the same command and `jax.distributed` configures itself from the TPU metadata
(parallel/distributed.py). A slice of more than one host needs one workdir they all see: a
`gs://` workdir (gcsfs is installed with the requirements), which `fetch` copies to runs/ with
`gcloud storage` and which `up --delete_after` and `sweep` leave in the bucket. A relative
workdir is the same path under ~/scalelab on each worker: fine on a one-host VM (v4-8), refused
by launch/run.py on a pod slice. `sweep` hands each independent sweep job (launch/cluster.py) to its
own VM `<name>-<i>`, all at once, fetches each job's run directories and deletes its VM, then
runs the sweep locally once more to collect the finished points and fit. `--dry_run` prints
every command instead of running it.
"""

import argparse
import os
import shlex
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from launch.cluster import ROOT, execute, parse_with_overrides, run_args, sweep_jobs

REMOTE = "~/scalelab"
ACTIONS = ("create", "copy", "install", "run", "logs", "fetch", "delete", "up", "sweep")


def _gcloud(args, verb: str, *rest: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *rest, f"--zone={args.zone}"]
    return cmd + ([f"--project={args.project}"] if args.project else [])


def _ssh(args, name: str, command: str, worker: str = "all") -> list[str]:
    return _gcloud(args, "ssh", name, f"--worker={worker}", f"--command={command}")


def create(args, name: str) -> list[list[str]]:
    cmd = _gcloud(
        args,
        "create",
        name,
        f"--accelerator-type={args.accelerator_type}",
        f"--version={args.version}",
    )
    return [cmd + (["--spot"] if args.spot else [])]


def copy(args, name: str) -> list[list[str]]:
    tarball = os.path.join(tempfile.gettempdir(), f"scalelab-{name}.tgz")
    return [
        ["tar", "-czf", tarball, "--exclude=./.git", "--exclude=./runs", "-C", ROOT, "."],
        _gcloud(args, "scp", tarball, f"{name}:scalelab.tgz", "--worker=all"),
        _ssh(args, name, f"mkdir -p {REMOTE} && tar -xzf ~/scalelab.tgz -C {REMOTE}"),
    ]


def install(args, name: str) -> list[list[str]]:
    # gcsfs: gs:// workdirs and data dirs (etils.epath, and so Orbax, reach GCS through it).
    jax_tpu = f"'jax[tpu]=={args.jax_version}'"
    pip = f"cd {REMOTE} && pip install -q -r requirements.txt {jax_tpu} gcsfs"
    return [_ssh(args, name, pip)]


def run(args, name: str, overrides: list[str]) -> list[list[str]]:
    command = shlex.join(run_args(args.config, overrides, args.workdir))
    detached = f"cd {REMOTE} && (nohup {command} > run.log 2>&1 & echo $! > run.pid)"
    return [_ssh(args, name, detached)]


def logs(args, name: str) -> list[list[str]]:
    # Ends when worker 0's run does.
    follow = f"cd {REMOTE} && tail -n +1 -f run.log --pid=$(cat run.pid)"
    return [_ssh(args, name, follow, worker="0")]


def _remote(workdir: str) -> bool:
    return "://" in workdir


def fetch(args, name: str) -> list[list[str]]:
    if _remote(args.workdir):  # already in the bucket: copy it into runs/
        return [["gcloud", "storage", "cp", "--recursive", args.workdir.rstrip("/"), "runs"]]
    # Into the parent: scp --recurse merges the remote workdir into a local one of that name.
    local = os.path.dirname(os.path.abspath(args.workdir))
    remote = f"{name}:scalelab/{args.workdir}"  # scp paths are relative to the remote home
    return [["mkdir", "-p", local], _gcloud(args, "scp", "--recurse", remote, local, "--worker=0")]


def delete(args, name: str) -> list[list[str]]:
    return [_gcloud(args, "delete", name, "--quiet")]


def up(args, name: str, overrides: list[str]) -> list[list[str]]:
    cmds = create(args, name) + copy(args, name) + install(args, name)
    cmds += run(args, name, overrides) + logs(args, name)
    if not args.delete_after:
        return cmds
    return cmds + ([] if _remote(args.workdir) else fetch(args, name)) + delete(args, name)


def sweep(args) -> list[list[list[str]]]:
    """Per job, its VM's commands (run concurrently); the last list collects and fits locally."""
    jobs = sweep_jobs(args.config, args.overrides, args.workdir)
    per_vm = []
    for i, only in enumerate(jobs):
        name = f"{args.name}-{i}"
        vm = create(args, name) + copy(args, name) + install(args, name)
        vm += run(args, name, [*args.overrides, f"--config.sweep.only={only}"])
        vm += logs(args, name) + ([] if _remote(args.workdir) else fetch(args, name))
        vm += delete(args, name)
        per_vm.append(vm)
    collect = [sys.executable, *run_args(args.config, args.overrides, args.workdir)[1:]]
    return per_vm + [[collect]]


def plan(args) -> list[list[list[str]]]:
    """Groups of commands: the groups run concurrently, the commands of a group in order."""
    a, name = args.action, args.name
    if a == "sweep":
        return sweep(args)
    if a in ("run", "up"):
        return [globals()[a](args, name, args.overrides)]
    return [globals()[a](args, name)]


def parse(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("action", choices=ACTIONS)
    p.add_argument("--name", required=True, help="TPU VM name (sweep: prefix of one per job)")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--accelerator_type", default="v4-8")
    p.add_argument("--version", default="tpu-ubuntu2204-base", help="TPU VM software image")
    p.add_argument("--jax_version", default="0.10.2")
    p.add_argument("--spot", action="store_true")
    p.add_argument("--config", default="")
    p.add_argument("--workdir", default="")
    p.add_argument("--delete_after", action="store_true", help="up: fetch and delete at the end")
    p.add_argument("--dry_run", action="store_true")
    args = parse_with_overrides(p, argv)
    if args.action in ("run", "up", "sweep", "fetch") and not (args.config and args.workdir):
        p.error(f"{args.action} needs --config and --workdir")
    if os.path.isabs(args.workdir):
        p.error(
            "--workdir must be gs://BUCKET/... or relative (the same path under ~/scalelab on "
            "each worker)"
        )
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    groups = plan(args)
    if args.action != "sweep" or args.dry_run:
        for i, group in enumerate(groups):
            if len(groups) > 1:
                print(f"# {'collect and fit' if i == len(groups) - 1 else f'job {i}'}")
            execute(group, args.dry_run)
        return
    with ThreadPoolExecutor(len(groups) - 1) as pool:  # one VM per job, all at once
        list(pool.map(lambda g: execute(g, False), groups[:-1]))
    execute(groups[-1], False)


if __name__ == "__main__":
    main(sys.argv[1:])
