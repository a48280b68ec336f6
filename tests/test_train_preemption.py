"""Preemption and crashes of a real `launch/run.py` process, then resumed: nothing lost or repeated.

SIGTERM mid-run: the process exits 0 within 60 s with a checkpoint at the step it reached, and the
resumed run ends bitwise where an uninterrupted run ends. SIGKILL at three moments (before the
first checkpoint, while an async checkpoint is written but not committed, between checkpoints):
every rerun continues from the newest committed checkpoint, and the final parameters, optimizer
state and losses equal the uninterrupted run's, with no step written twice to metrics.jsonl.
"""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests.helpers import FAST_COMPILE, ROOT, TINY_RUN, Proc, make_corpus
from train.checkpoint import SLOW_COMMIT_ENV, load_state
from train.metrics import read_metrics

STEPS, EVERY = 40, 10


def _proc(tmp, workdir, **env) -> Proc:
    """A training subprocess of the tiny GPT in `workdir`."""
    glob = make_corpus(str(tmp / "corpus"))
    overrides = {
        "data.glob": glob,
        "data.data_dir": f"{tmp}/tfds",
        **TINY_RUN,
        "train.steps": STEPS,
        "train.warmup_steps": 2,
        "train.ckpt_every": EVERY,
        "train.keep_ckpts": 5,
        "train.eval_every": STEPS,
        "train.eval_batches": 1,
        "train.log_every": 1,
        "train.peak_flops": 1e11,
    }
    cmd = [sys.executable, "launch/run.py", "--config=experiments/gpt.py:size=tiny,runlocal"]
    cmd += [f"--config.{k}={v}" for k, v in overrides.items()]
    cmd += [f"--workdir={workdir}", f"--compile_cache={tmp}/cache"]
    return Proc(cmd, f"{workdir}.{time.monotonic_ns()}.err", **env)


def _logged_steps(workdir) -> list[int]:
    path = f"{workdir}/metrics.jsonl"
    if not os.path.exists(path):
        return []
    return [r["step"] for r in read_metrics(path) if "train/loss" in r]


def _committed(workdir) -> int:
    """The newest committed checkpoint step (0: none)."""
    d = f"{workdir}/checkpoints"
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
    return max(steps, default=0)


def _assert_same_run(workdir, reference):
    """Final state bitwise equal; every metric written once per step; the same losses."""
    a = jax.tree.leaves(load_state(f"{workdir}/checkpoints", STEPS))
    b = jax.tree.leaves(load_state(f"{reference}/checkpoints", STEPS))
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    rows = read_metrics(f"{workdir}/metrics.jsonl")
    seen: dict[str, list[int]] = {}
    for r in rows:
        for k in r:
            if k != "step":
                seen.setdefault(k, []).append(r["step"])
    for name, steps in seen.items():
        assert steps == sorted(set(steps)), f"{name} written twice or out of order: {steps}"

    def losses(w):
        return [
            (r["step"], r["train/loss"])
            for r in read_metrics(f"{w}/metrics.jsonl")
            if "train/loss" in r
        ]

    assert losses(workdir) == losses(reference)
    assert [s for s, _ in losses(workdir)] == list(range(1, STEPS + 1))


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preempt")
    workdir = str(tmp / "straight")
    p = _proc(tmp, workdir)
    assert p.finish() == 0, p.stderr()[-3000:]
    return tmp, workdir


@pytest.mark.slow
def test_sigterm_checkpoints_exits_0_and_the_resumed_run_is_bitwise_equal(straight):
    tmp, reference = straight
    workdir = str(tmp / "sigterm")
    p = _proc(tmp, workdir)
    p.wait_for(lambda: len(_logged_steps(workdir)) >= 3, "step 3")
    p.proc.send_signal(signal.SIGTERM)
    t = time.perf_counter()
    assert p.finish(timeout=60) == 0, p.stderr()[-3000:]
    took = time.perf_counter() - t
    out = p.stdout()
    reached = _committed(workdir)
    assert 3 <= reached < STEPS, out
    assert f"preempted at step {reached}: checkpoint saved" in out and "resume with:" in out
    assert max(_logged_steps(workdir)) <= reached
    assert not os.path.exists(f"{workdir}/summary.json")
    print(f"SIGTERM to exit: {took:.1f} s; checkpoint at step {reached}")

    resumed = _proc(tmp, workdir)
    assert resumed.finish() == 0, resumed.stderr()[-3000:]
    assert f"continuing from step {reached} of {workdir}" in resumed.stdout()
    _assert_same_run(workdir, reference)


@pytest.mark.slow
def test_sigkill_at_three_moments_resumes_to_the_uninterrupted_result(straight):
    tmp, reference = straight
    workdir = str(tmp / "sigkill")

    def kill(p):
        p.proc.send_signal(signal.SIGKILL)
        p.finish()
        return _committed(workdir)

    # 1. Mid-run, before the first checkpoint: everything so far is lost, nothing is left half.
    p = _proc(tmp, workdir)
    p.wait_for(lambda: len(_logged_steps(workdir)) >= 3, "step 3")
    at = kill(p)
    # 2. While the async save of step 20 is written but not committed (the test hook holds it).
    p = _proc(tmp, workdir, **{SLOW_COMMIT_ENV: "20"})
    p.wait_for(lambda: "checkpoint 20: written, commit delayed" in p.stdout(), "the step-20 save")
    assert at == 0 or f"continuing from step {at}" in p.stdout()
    at = kill(p)
    assert at == 10 and any(
        ".orbax-checkpoint-tmp" in n for n in os.listdir(f"{workdir}/checkpoints")
    )
    # 3. Between checkpoints, after step 20 committed.
    p = _proc(tmp, workdir)
    p.wait_for(
        lambda: _committed(workdir) >= 20 and max(_logged_steps(workdir), default=0) >= 23,
        "step 23 with step 20 committed",
    )
    assert "continuing from step 10" in p.stdout()
    assert "unfinished save" in p.stderr()  # the uncommitted step 20, moved aside and named
    at = kill(p)
    assert at >= 20

    last = _proc(tmp, workdir)
    assert last.finish() == 0, last.stderr()[-3000:]
    assert f"continuing from step {at}" in last.stdout()
    _assert_same_run(workdir, reference)
    assert os.listdir(
        f"{workdir}/checkpoints.corrupt"
    )  # the half-written save is kept, not deleted


_WORKER = """
import sys, time
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
pid = int(sys.argv[1])
jax.distributed.initialize("localhost:{port}", num_processes=2, process_id=pid)
import jax.numpy as jnp
from jax.experimental import multihost_utils
from train.preemption import active
with active() as guard:
    for step in range(1, 3000):
        multihost_utils.process_allgather(jnp.array([step]))  # the hosts move in lockstep
        if step == 20:
            print("ready", flush=True)
        if guard.requested(step):
            print(f"stop at {{step}}", flush=True)
            break
        time.sleep(0.01)
jax.distributed.shutdown()
"""


@pytest.mark.slow
def test_two_hosts_stop_at_the_same_step_when_one_gets_sigterm(tmp_path):
    """JAX's preemption sync point, as the loop uses it with several processes."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = tmp_path / "worker.py"
    script.write_text(_WORKER.format(root=ROOT, port=port))
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(i)], env=env, stdout=subprocess.PIPE, text=True
        )
        for i in range(2)
    ]
    before = []  # gloo prints its own lines first
    while not before or before[-1] != "ready":
        line = procs[1].stdout.readline()
        assert line, before
        before.append(line.strip())
    procs[1].send_signal(signal.SIGTERM)  # only host 1 is told
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    stops = [[line for line in out.splitlines() if line.startswith("stop at")] for out in outs]
    assert len(stops[0]) == 1 and stops[0] == stops[1], outs


def test_sigterm_becomes_a_request_and_a_second_one_acts_normally():
    """Fast: inside `active()` a SIGTERM only sets the request polled each step; the handler is
    one-shot (a second signal would get the previous behaviour) and leaving restores it."""
    from train import preemption

    before = signal.getsignal(signal.SIGTERM)
    with preemption.active() as guard:
        assert not guard.requested(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested(1) and guard.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == before  # one-shot
    assert signal.getsignal(signal.SIGTERM) == before
