"""Multi-process start-up: how a process finds its job, and 2 processes x 4 devices = 1 x 8."""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from parallel.distributed import resolve
from parallel.mesh import make_mesh
from parallel.sharding import process_batch_block
from tests.helpers import FAST_COMPILE, make_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_resolve_explicit_and_env():
    assert resolve(env={}) is None
    src, kw = resolve("10.0.0.1:1234", 4, 3, env={})
    assert src.startswith("flags") and kw == dict(
        coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3
    )
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert resolve(env=env)[1] == dict(coordinator_address="h:1", num_processes=2, process_id=1)
    assert resolve("h:1", 1, 0, env={}) is None  # one process: nothing to start
    with pytest.raises(ValueError, match="needs all of flags"):
        resolve("h:1", 2, None, env={})
    with pytest.raises(ValueError, match="process_id=2 must be in"):
        resolve("h:1", 2, 2, env={})


def test_resolve_slurm():
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "gpu[017-020],gpu031",
        "SLURM_STEP_NUM_NODES": "2",
    }
    src, kw = resolve(env=env)
    # JAX's port rule: job id mod 4096 in the top 4096 ports.
    assert src == "SLURM" and kw["coordinator_address"] == f"gpu017:{4242 % 4096 + 61440}"
    assert kw["num_processes"] == 16 and kw["process_id"] == 9
    assert kw["local_device_ids"] == [1]  # 8 tasks per node: one GPU each
    env.update(SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_STEP_NODELIST="a1,b2")
    src, kw = resolve(env=env)
    assert kw["coordinator_address"].startswith("a1:") and "local_device_ids" not in kw
    assert resolve(env={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "1"}) is None  # one task
    assert resolve(env={"TPU_WORKER_HOSTNAMES": "w0,w1"}) == ("Cloud TPU VM", {})


class _ProcessView:
    """A real sharding over the 8 devices seen from one simulated process: only `devices` are
    addressable (what `jax.sharding.NamedSharding` reports on a host of a multi-host job)."""

    def __init__(self, sharding: NamedSharding, devices):
        self.sharding, self.devices = sharding, set(devices)

    def addressable_devices_indices_map(self, shape):
        full = self.sharding.devices_indices_map(shape)
        return {d: index for d, index in full.items() if d in self.devices}


def _blocks(mesh_cfg, spec, process_of, rows=16, only=None):
    """`process_batch_block` of each simulated process (or of process `only`); `process_of(mesh
    coordinates)` says which process owns the device at (data, stage, fsdp, tensor)."""
    mesh = make_mesh(mesh_cfg)
    owners = {}
    for coords in np.ndindex(mesh.devices.shape):
        owners.setdefault(process_of(*coords), []).append(mesh.devices[coords])
    sharding = NamedSharding(mesh, spec)
    asked = sorted(owners) if only is None else [only]
    return [process_batch_block(_ProcessView(sharding, owners[p]), rows) for p in asked]


def test_process_batch_block():
    mesh = make_mesh(dict(data=8, stage=1, fsdp=1, tensor=1))
    # One process holds every row: the whole batch is its block.
    assert process_batch_block(NamedSharding(mesh, P("data")), 16) == (0, 1)
    assert process_batch_block(NamedSharding(mesh, P()), 16) == (0, 1)
    data8 = dict(data=8, stage=1, fsdp=1, tensor=1)
    # 2 (4) hosts over data=8: host h holds data shards 4h..4h+3 (2h, 2h+1), rows 8h.. (4h..).
    assert _blocks(data8, P("data"), lambda d, s, f, t: d // 4) == [(0, 2), (1, 2)]
    assert _blocks(data8, P("data"), lambda d, s, f, t: d // 2) == [(i, 4) for i in range(4)]
    # Batch over data x fsdp (fsdp_tp's rule): 2 hosts along data, each 4 devices of fsdp x tensor.
    mesh_dft = dict(data=2, stage=1, fsdp=2, tensor=2)
    split = P(("data", "fsdp"))
    assert _blocks(mesh_dft, split, lambda d, s, f, t: d) == [(0, 2), (1, 2)]
    # 4 hosts, one per (data, fsdp) pair; each holds both tensor shards of its rows.
    per_pair = _blocks(mesh_dft, split, lambda d, s, f, t: 2 * d + f)
    assert per_pair == [(0, 4), (1, 4), (2, 4), (3, 4)]
    # Hosts split along tensor hold every data shard: both read the whole (replicated) batch.
    assert _blocks(mesh_dft, split, lambda d, s, f, t: t) == [(0, 1), (0, 1)]
    # Hosts split along stage (the 2-process pipeline test's layout): the same, whole batch.
    staged = dict(data=2, stage=2, fsdp=1, tensor=2)
    assert _blocks(staged, P("data"), lambda d, s, f, t: s) == [(0, 1), (0, 1)]
    assert _blocks(staged, P("data"), lambda d, s, f, t: d) == [(0, 2), (1, 2)]


@pytest.mark.parametrize(
    "data, shards",
    [
        (4, (0, 2)),  # rows 0-3 and 8-11: a gap, and a span (12) that does not divide 16
        (4, (1, 2)),  # rows 4-11: one run of 8 rows, but not starting at a multiple of 8
        (8, (0, 2, 3)),  # rows 0-1 and 4-7: a gap inside an aligned span of 8
        (4, (0, 1, 2)),  # rows 0-11: one aligned run, but 12 rows do not divide the 16
    ],
)
def test_process_batch_block_rejects_scattered_rows(data, shards):
    """A host whose rows are not one aligned block cannot read one shard of the stream."""
    mesh_cfg = dict(data=data, stage=1, fsdp=1, tensor=8 // data)
    process_of = lambda d, s, f, t: int(d not in shards)  # process 0 holds `shards`
    with pytest.raises(ValueError, match="not one aligned block"):
        _blocks(mesh_cfg, P("data"), process_of, only=0)


def _free_port() -> int:
    """A port the OS says is free now (bound to port 0, then released for the coordinator)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# 2 pipeline stages x 4-way tensor: with 2 hosts, stage 0 on one and stage 1 on the other, so
# activations cross hosts and both hosts feed the same (replicated) rows.
PIPELINE_ACROSS_HOSTS = {
    "parallel.mesh.data": 1,
    "parallel.mesh.stage": 2,
    "parallel.mesh.tensor": 4,
    "parallel.pipeline.microbatches": 2,
}
# data=2 x 4-way tensor: with 2 hosts, each holds one data shard and feeds its own 4 rows.
DATA_ACROSS_HOSTS = {"parallel.mesh.data": 2, "parallel.mesh.tensor": 4}


def _cmd(workdir, corpus, steps=6, mesh=None):
    """The command a cluster job runs on every host (launch/slurm.py writes the same)."""
    overrides = {
        "data.glob": f"{corpus}/*.py",
        "data.data_dir": f"{corpus}/../tfds",
        "data.val_fraction": 0.1,
        "data.seq_len": 32,
        "data.batch_size": 8,
        "data.shards": 2,  # the same global batches on 1 or 2 processes
        "model.n_layers": 2,
        "model.d_model": 32,
        "model.n_heads": 4,
        "model.d_ff": 64,
        "model.layer_loop": "scan",
        "train.steps": steps,
        "train.grad_accum": 1,
        "train.eval_every": 100,
        "train.ckpt_every": 2,
        "train.keep_ckpts": 3,
        "train.eval_batches": 1,
        "train.log_every": 1,
        "train.peak_flops": 1e11,
        **(PIPELINE_ACROSS_HOSTS if mesh is None else mesh),
    }
    return [
        sys.executable,
        "launch/run.py",
        "--config=experiments/gpt.py:size=tiny,runlocal",
        "--shared_workdir",  # the processes share this machine's disk (slurm.py passes it too)
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]


def _run(workdir, corpus, processes: int, steps=6, mesh=None):
    """Trains `workdir` with 1 or 2 processes. Each (process count, rank) has its own compile cache
    beside the corpus, so a resumption compiles nothing its first run compiled."""
    cache = lambda rank: f"--compile_cache={corpus}_cache_{processes}_{rank}"
    command = _cmd(workdir, corpus, steps, mesh)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={8 // processes} {FAST_COMPILE}"
    if processes == 1:
        out = subprocess.run(
            [*command, cache(0)], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout
    # The environment of a 2-task SLURM job step on one node: the same command on each task.
    env.update(
        SLURM_JOB_ID="4242",
        SLURM_NTASKS=str(processes),
        SLURM_STEP_NODELIST="localhost",
        SLURM_STEP_NUM_NODES="1",
        JAX_COORDINATOR_PORT=str(_free_port()),
    )
    procs = [
        subprocess.Popen(
            [*command, cache(i)],
            cwd=ROOT,
            env={**env, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return outs[0][0]


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _params(workdir, step):
    """A checkpoint's parameters, restored into this (8-device, 1-process) run's shardings."""
    import ml_collections
    import orbax.checkpoint as ocp

    from train.loop import Run
    from train.state import abstract_with_shardings

    with open(os.path.join(workdir, "config.json")) as f:
        run = Run(ml_collections.ConfigDict(json.load(f)))
    target = abstract_with_shardings(run.state_shardings, jax.eval_shape(lambda: run.state))
    args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        state = manager.restore(step, args=args)["state"]
    return jax.tree.leaves(jax.device_get(state.params))


def _assert_same(a, b, rtol=1e-5):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-6)


@pytest.mark.slow
def test_two_processes_match_one_and_checkpoints_cross(tmp_path):
    corpus = os.path.dirname(make_corpus(str(tmp_path / "corpus")))
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run(one, corpus, processes=1)  # first: it builds the dataset both runs read
    out = _run(two, corpus, processes=2)
    assert "distributed: process 0 of 2 (SLURM), 4 local of 8 devices" in out
    assert "pipeline: gpipe, P=2 stages, M=2" in out
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l1) == sorted(l2) == list(range(1, 7))
    np.testing.assert_allclose([l2[s] for s in l2], [l1[s] for s in l2], rtol=1e-5)
    _assert_same(_params(two, 6), _params(one, 6))

    # Resume each run from step 4 on the other process count: the 2-process checkpoint in one
    # process and the 1-process checkpoint in two; both must finish where the original did.
    for src, procs in ((two, 1), (one, 2)):
        dst = f"{src}_resumed_on_{procs}"
        shutil.copytree(src, dst)
        shutil.rmtree(os.path.join(dst, "checkpoints", "6"))
        os.remove(os.path.join(dst, "summary.json"))
        out = _run(dst, corpus, processes=procs)
        assert "continuing from step 4" in out and "written by another process count" in out
        np.testing.assert_allclose(_losses(dst)[6], _losses(src)[6], rtol=1e-5)
        _assert_same(_params(dst, 6), _params(src, 6))


@pytest.mark.slow
def test_two_processes_each_feeding_its_rows_match_one(tmp_path):
    """`parallel.mesh.data` spans the processes: each reads only its block of rows (data.shards
    = 2), and the run equals one process that reads the whole batch on the same mesh."""
    corpus = os.path.dirname(make_corpus(str(tmp_path / "corpus")))
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _run(one, corpus, processes=1, steps=4, mesh=DATA_ACROSS_HOSTS)
    out = _run(two, corpus, processes=2, steps=4, mesh=DATA_ACROSS_HOSTS)
    assert "distributed: process 0 of 2 (SLURM), 4 local of 8 devices" in out
    l1, l2 = _losses(one), _losses(two)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
    np.testing.assert_allclose([l2[s] for s in l2], [l1[s] for s in l2], rtol=1e-5)
    _assert_same(_params(two, 4), _params(one, 4))


def test_data_shards_make_batches_independent_of_process_count(tmp_path):
    """`data.shards=2`: one process reads both shards side by side, exactly what two processes
    read one each (so runs on 1 or 2 hosts train on the same global batches)."""
    from data.pipeline import make_train_iterator
    from tests.helpers import small_config

    data = small_config(tmp_path).data
    data.shards = 2
    one = make_train_iterator(data, seed=3)
    halves = [make_train_iterator(data, seed=3, process_index=i, process_count=2) for i in (0, 1)]
    for _ in range(3):
        batch, parts = next(one), [next(h) for h in halves]
        assert batch["tokens"].shape == (data.batch_size, data.seq_len)
        for k in batch:
            np.testing.assert_array_equal(batch[k], np.concatenate([p[k] for p in parts]))
    data.shards = 3
    with pytest.raises(ValueError, match="data.shards=3 is not a multiple of the 2"):
        make_train_iterator(data, seed=3, process_index=0, process_count=2)


def _two_processes(workdir, corpus, *extra):
    """`launch/run.py` as two processes (2 x 4 CPU devices) joined by explicit flags."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_COORD"))}
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}",
    )
    port = _free_port()
    cmd = [
        sys.executable,
        "launch/run.py",
        "--config=experiments/gpt.py:size=tiny,runlocal",
        f"--workdir={workdir}",
        f"--config.data.glob={corpus}/*.py",
        f"--config.data.data_dir={corpus}/../tfds",
        "--config.data.val_fraction=0.1",
        "--config.data.seq_len=32",
        "--config.data.batch_size=8",
        "--config.model.n_layers=1",
        "--config.model.d_model=32",
        "--config.model.n_heads=2",
        "--config.model.d_ff=64",
        "--config.train.steps=2",
        "--config.train.grad_accum=1",
        "--config.train.eval_every=100",
        "--config.train.eval_batches=1",
        "--config.train.log_every=1",
        "--config.train.peak_flops=1e11",
        "--compile_cache=",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        *extra,
    ]
    procs = [
        subprocess.Popen(
            [*cmd, f"--process_id={i}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs, strict=True)]


def test_local_workdir_is_refused_by_both_processes(tmp_path):
    """Two real processes (jax.distributed over gloo), each on its own "host": a local workdir
    would be two disks on a pod, so both exit 2 with one line naming --workdir and create
    nothing."""
    corpus = os.path.dirname(make_corpus(str(tmp_path / "corpus"), n_files=8))
    workdir = str(tmp_path / "run")
    for code, _, err in _two_processes(workdir, corpus):
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2, err[-3000:]
        assert errors == [
            f"error: --workdir={workdir} is a local directory, but 2 processes (hosts) must "
            "write one shared workdir; pass --workdir=gs://BUCKET/..., or add --shared_workdir "
            "if it is a mount every host sees (NFS)"
        ], err[-3000:]
    assert not os.path.exists(workdir)
    assert not os.path.exists(tmp_path / "tfds")  # refused before the data were built


@pytest.mark.slow
def test_shared_workdir_flag_lets_two_processes_train(tmp_path):
    corpus = os.path.dirname(make_corpus(str(tmp_path / "corpus")))
    workdir = str(tmp_path / "run")
    results = _two_processes(workdir, corpus, "--shared_workdir")
    for code, _, err in results:
        assert code == 0, err[-3000:]
    assert "distributed: process 0 of 2" in results[0][1]
    assert sorted(_losses(workdir)) == [1, 2]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "2"))
