"""Shared test fixtures: a small local corpus, a shrunken real config, an in-memory gs://, a
training subprocess."""

import contextlib
import os
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator

from experiments.gpt import get_config

# XLA flag for test subprocesses: LLVM at -O0 compiles in about half the CPU time and computes the
# same values (the smoke sweep gave identical losses, 143 -> 105 s of CPU); see tests/conftest.py.
FAST_COMPILE = "--xla_backend_optimization_level=0"

# Command-line overrides that shrink experiments/gpt.py:size=tiny to a 1 x 64 model on 8 x 64-token
# batches: the subprocess runs of the preemption and distillation tests. One attention per layer
# (no causal blocks): the fewest ops to compile; the blocks' exactness is tested on its own.
TINY_RUN = {
    "data.val_fraction": 0.1,
    "data.seq_len": 64,
    "data.batch_size": 8,
    "model.n_layers": 1,
    "model.d_model": 64,
    "model.n_heads": 2,
    "model.d_ff": 256,
    "train.grad_accum": 1,
    "model.causal_blocks": 1,
}


def make_corpus(root: str, n_files: int = 40) -> str:
    """Copies `n_files` stdlib modules into `root`; returns a glob over them."""
    stdlib = sysconfig.get_paths()["stdlib"]
    names = sorted(f for f in os.listdir(stdlib) if f.endswith(".py"))[:n_files]
    os.makedirs(root, exist_ok=True)
    for name in names:
        with (
            open(os.path.join(stdlib, name), "rb") as src,
            open(os.path.join(root, name), "wb") as dst,
        ):
            dst.write(src.read())
    return os.path.join(root, "*.py")


def small_config(tmp_path, steps: int = 20):
    """The real `experiments/gpt.py` tiny config shrunk to seconds of work on a local corpus."""
    config = get_config("size=tiny,runlocal")
    config.data.glob = make_corpus(str(tmp_path / "corpus"))
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.val_fraction = 0.1
    config.data.seq_len = 64
    config.data.batch_size = 8
    config.model.n_layers = 1
    config.model.d_model = 64
    config.model.n_heads = 2
    config.model.d_ff = 256
    config.train.steps = steps
    config.train.grad_accum = 1  # 8 rows over 8 simulated devices
    config.train.log_every = 1
    config.train.eval_every = 10
    config.train.ckpt_every = 10
    config.train.eval_batches = 2
    config.train.peak_flops = 1e11  # skip measuring
    return config


@contextlib.contextmanager
def fake_gcs() -> Iterator[type]:
    """Serves `gs://` from memory, through the same code path a real gs:// path takes here.

    `etils.epath` (which common/atomic.py and Orbax's metadata use) sends a gs:// path, when
    TensorFlow is not installed, to `fsspec.filesystem("gcs")`; that is gcsfs in production and
    this in-memory object store in tests. Like GCS (and gcsfs) it has no directories of its own (a
    prefix exists while an object lies under it), rename is copy + delete, and append mode
    silently overwrites. Yields the filesystem class: `.store` holds the objects by
    "bucket/key", `.puts` lists every object written, in order.
    """
    import fsspec
    from etils.epath import backend
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.utils import stringify_path

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        root_marker = ""
        store: dict = {}
        pseudo_dirs: list = [""]
        puts: list = []

        @classmethod
        def _strip_protocol(cls, path):
            path = stringify_path(path)
            for prefix in ("gs://", "gcs://"):
                path = path.removeprefix(prefix)
            return path.rstrip("/")

        def makedirs(self, path, exist_ok=False):
            pass  # gcsfs: a prefix needs no creating

        def mkdir(self, path, create_parents=True, **kwargs):
            pass

        def _open(self, path, mode="rb", **kwargs):
            mode = mode.replace("a", "w")  # gcsfs warns and overwrites: objects take no appends
            if "w" in mode:
                self.puts.append(self._strip_protocol(path))
            return super()._open(path, mode, **kwargs)

    registry = sys.modules["fsspec.registry"]._registry  # `fsspec.registry` is its read-only view
    saved = {p: registry.get(p) for p in FakeGCS.protocol}
    for p in FakeGCS.protocol:
        fsspec.register_implementation(p, FakeGCS, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()  # etils caches the filesystem
    try:
        yield FakeGCS
    finally:
        for p, cls in saved.items():
            if cls is None:
                registry.pop(p, None)
            else:
                fsspec.register_implementation(p, cls, clobber=True)
        backend.fsspec_backend._get_filesystem.cache_clear()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Proc:
    """A subprocess (in the repository root, on CPU) whose stdout lines are collected as they
    arrive and whose stderr goes to the file `err_path`."""

    def __init__(self, cmd: list[str], err_path: str, **env):
        self.err = open(err_path, "w+")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=dict(os.environ, JAX_PLATFORMS="cpu", **env),  # 8 devices, as in conftest
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def stdout(self) -> str:
        return "".join(self.lines)

    def stderr(self) -> str:
        self.err.seek(0)
        return self.err.read()

    def wait_for(self, cond, what: str, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while not cond():
            assert self.proc.poll() is None, f"exited before {what}: {self.stderr()[-3000:]}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)

    def finish(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code


def logged_values(workdir: str) -> dict[tuple[int, str], float]:
    """Every value a run logged, by (step, name); timings (perf/*) left out, as they differ between
    processes and a resumed run logs its compile time at its first step."""
    from train.metrics import read_metrics

    out = {}
    for r in read_metrics(f"{workdir}/metrics.jsonl"):
        for k, v in r.items():
            if k != "step" and not k.startswith("perf/"):
                assert (r["step"], k) not in out, f"{k} written twice at step {r['step']}"
                out[r["step"], k] = v
    return out


def kill_during_save_and_resume(start, tmp_path, steps: int, every: int, timeout: float = 600):
    """Runs a training stage straight through and again SIGKILLed while the async save of step
    2 * `every` is written but not committed, then rerun; asserts the rerun continued from step
    `every`, and that both runs end with array-equal train states and log the same values.

    Args:
      start: `start(workdir, **env) -> Proc`, the stage in a subprocess.
      tmp_path: where the two workdirs go.
      steps, every: the stage's train steps and checkpoint period.
      timeout: seconds each run may take.

    Returns:
      The values the killed-and-resumed run logged (`logged_values`).
    """
    import signal

    import jax
    import numpy as np

    from train.checkpoint import SLOW_COMMIT_ENV, load_state
    from train.metrics import read_metrics

    def finish(p: Proc) -> str:
        assert p.finish(timeout) == 0, p.stderr()[-3000:]
        return p.stdout()

    straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
    assert "stage done" in finish(start(straight))
    held = 2 * every  # its save is held after writing: the steps after `every` are done
    p = start(killed, **{SLOW_COMMIT_ENV: str(held)})
    p.wait_for(lambda: f"checkpoint {held}: written, commit delayed" in p.stdout(), "the save")
    p.proc.send_signal(signal.SIGKILL)
    p.proc.wait(60)
    assert max(r["step"] for r in read_metrics(f"{killed}/metrics.jsonl")) >= held
    assert f"continuing from step {every} of {killed}" in finish(start(killed))
    a = jax.tree.leaves(load_state(f"{killed}/checkpoints", steps))
    b = jax.tree.leaves(load_state(f"{straight}/checkpoints", steps))
    assert len(a) == len(b) > 5
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    logged = logged_values(killed)
    assert logged == logged_values(straight)
    return logged
