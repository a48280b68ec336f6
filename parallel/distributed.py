"""Multi-process start-up: `jax.distributed.initialize` from flags, environment or the cluster.

Where the coordinator, process count and process id come from, first match wins:
  1. explicit values: `launch/run.py --coordinator_address=host:port --num_processes=N
     --process_id=I`, else the environment `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
     `JAX_PROCESS_ID` (all three, or none);
  2. a SLURM job step with more than one task (`SLURM_JOB_ID`, `SLURM_NTASKS`, `SLURM_PROCID`,
     `SLURM_STEP_NODELIST`): the first node of the step is the coordinator, on a port derived from
     the job id (JAX's own rule), and with several tasks per node each task takes the GPU of its
     `SLURM_LOCALID`;
  3. a Cloud TPU VM (`TPU_WORKER_HOSTNAMES`, `TPU_ACCELERATOR_TYPE` or /dev/accel0): JAX reads
     everything from the TPU metadata;
  4. otherwise a single process, and nothing is initialised.

It must run before anything touches a JAX backend. On CPU it selects the gloo collectives, so
several processes on one machine (the tests) exchange data like hosts of a pod.
"""

import os
import re
from collections.abc import Mapping

import jax

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _first_host(nodelist: str) -> str:
    """'node[001-004,9],gpu7' -> 'node001': the first host of a SLURM compressed host list."""
    m = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    return m.group(1) + (re.split("[,-]", m.group(2))[0] if m.group(2) else "")


def resolve(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str, dict] | None:
    """How this process joins the job: `(source, initialize kwargs)`, or None for one process.

    Raises:
      ValueError: only some of the explicit values are given, or they are out of range.
    """
    env = os.environ if env is None else env
    explicit = [coordinator_address, num_processes, process_id]
    if all(v is None for v in explicit):
        explicit = [env.get(k) for k in ENV]
        source = "environment " + ", ".join(ENV)
    else:
        source = "flags --coordinator_address, --num_processes, --process_id"
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            raise ValueError(
                f"multi-process start needs all of {source}; got coordinator={explicit[0]}, "
                f"num_processes={explicit[1]}, process_id={explicit[2]}"
            )
        n, i = int(explicit[1]), int(explicit[2])
        if not 0 <= i < n:
            raise ValueError(f"process_id={i} must be in [0, num_processes={n})")
        if n == 1:
            return None
        kwargs = dict(coordinator_address=str(explicit[0]), num_processes=n, process_id=i)
        return source, kwargs
    if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        port = env.get("JAX_COORDINATOR_PORT") or str(int(env["SLURM_JOB_ID"]) % 4096 + 61440)
        nodelist = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
        kwargs = dict(
            coordinator_address=f"{_first_host(nodelist)}:{port}",
            num_processes=int(env["SLURM_NTASKS"]),
            process_id=int(env["SLURM_PROCID"]),
        )
        tasks = int(env["SLURM_NTASKS"])
        nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or tasks)
        if tasks > nodes and env.get("JAX_PLATFORMS", "") != "cpu":
            kwargs["local_device_ids"] = [int(env.get("SLURM_LOCALID", "0"))]  # task per GPU
        return "SLURM", kwargs
    if env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_ACCELERATOR_TYPE"):
        return "Cloud TPU VM", {}
    if os.path.exists("/dev/accel0"):
        return "Cloud TPU VM", {}
    return None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> str:
    """Starts `jax.distributed` if this is one process of many; returns a one-line description."""
    plan = resolve(coordinator_address, num_processes, process_id)
    if plan is None:
        return "single process"
    source, kwargs = plan
    # CPU processes (tests, or a CPU cluster) need a collectives backend across processes.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kwargs)
    return (
        f"process {jax.process_index()} of {jax.process_count()} ({source}), "
        f"{jax.local_device_count()} local of {jax.device_count()} devices"
    )
