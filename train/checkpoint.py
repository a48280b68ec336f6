"""Orbax checkpoints of the train state together with the data-iterator position.

One CheckpointManager step holds two items: `state` (the sharded TrainState, restored directly into
its shardings) and `data` (the grain iterator state of this process), so a resumed run continues
with exactly the next batch. Saves are asynchronous: device arrays are copied to host before `save`
returns (so the next step may donate them), files are written in the background, and Orbax commits
a step only when it is complete (temporary directory + rename).

Integrity: once a save has committed, a manifest `scalelab_files.json` listing every file of the
step with its size is written into the step directory. On start the newest step is checked
against it (and for Orbax's `commit_success.txt`) and then restored; a step that fails either way
is moved to `<directory>.corrupt/` (never deleted) with a warning naming it, and the next older
step is tried. Unfinished saves (Orbax's `*.orbax-checkpoint-tmp-*` directories, left by a kill
during an async write) are moved there too.

The directory may be remote (`gs://bucket/run/checkpoints`): Orbax writes the arrays with
TensorStore's GCS driver and its metadata through `etils.epath`, and this file reaches the same
objects through common/atomic.py. On GCS, Orbax does not rename a temporary directory but writes
the step directory in place and commits it with `commit_success.txt` last, so there an unfinished
save is a step directory without that file; it is moved aside like a local temporary directory
(on an object store a move is a copy and a delete, so it is slow for big steps but rare).
"""

import asyncio
import json
import os
import time
from collections.abc import Callable

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers
from orbax.checkpoint.path import atomicity

from common import atomic

MANIFEST = "scalelab_files.json"
COMMIT_FILE = "commit_success.txt"
TMP_MARK = ".orbax-checkpoint-tmp"
# Test hook: `<step>` makes the commit of that step's async save wait 120 s, so that a test can
# SIGKILL the process while the save is written but not yet committed.
SLOW_COMMIT_ENV = "SCALELAB_TEST_SLOW_COMMIT"


class _SlowCommit(atomicity.AtomicRenameTemporaryPath):
    async def finalize(self, *args, **kwargs):
        if self.get_final().name == os.environ.get(SLOW_COMMIT_ENV):
            print(f"checkpoint {self.get_final().name}: written, commit delayed", flush=True)
            await asyncio.sleep(120)
        return await super().finalize(*args, **kwargs)


def _files(step_dir: str) -> dict[str, int]:
    """Every file under `step_dir` (relative path -> size in bytes), the manifest excluded."""
    if atomic.is_remote(step_dir):
        return _remote_files(atomic.as_path(step_dir), "")
    out = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if not rel.startswith(MANIFEST):
                out[rel] = os.path.getsize(path)
    return out


def _remote_files(path, prefix: str) -> dict[str, int]:
    # A listing per directory (epath's walk returns bucket-relative roots for fsspec paths).
    out = {}
    for child in path.iterdir():
        rel = f"{prefix}{child.name}"
        if child.is_dir():
            out.update(_remote_files(child, rel + "/"))
        elif not rel.startswith(MANIFEST):
            out[rel] = child.stat().length
    return out


def check_step_dir(step_dir: str) -> str | None:
    """What is wrong with a committed step directory (None: it looks intact).

    Checks Orbax's commit marker and, when the manifest exists, that every listed file is there
    with its size (a truncated or deleted file). A step without a manifest (killed between the
    commit and the manifest) is only checked by restoring it.
    """
    if not atomic.isdir(step_dir):
        return "missing"
    if not atomic.exists(os.path.join(step_dir, COMMIT_FILE)):
        return f"no {COMMIT_FILE} (an unfinished save)"
    manifest = os.path.join(step_dir, MANIFEST)
    if not atomic.exists(manifest):
        return None
    try:
        expected = json.loads(atomic.read_text(manifest))
    except (OSError, ValueError) as e:
        return f"unreadable {MANIFEST} ({e})"
    found = _files(step_dir)
    for rel, size in sorted(expected.items()):
        if rel not in found:
            return f"{rel} is missing"
        if found[rel] != size:
            return f"{rel} has {found[rel]} bytes, {size} were written (truncated?)"
    return None


class Checkpointer:
    """Saves every `every` steps and at the end; restores the newest step on start."""

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 2,
        every: int = 500,
        keep_steps: tuple[int, ...] = (),
        async_save: bool = True,
        read_only: bool = False,
    ):
        """Opens (or creates) the checkpoint directory.

        Args:
          directory: the Orbax CheckpointManager directory.
          keep: how many of the newest checkpoints to keep.
          every: save period in steps (0: only when `should_save` says the run ends).
          keep_steps: steps kept besides the newest `keep` (a WSD trunk's branch points).
          async_save: write files in the background.
          read_only: open another run's checkpoints to restore from, never writing or deleting.
        """
        self.every = every
        self.directory = _absolute(directory)  # Orbax's async writer rejects relative paths
        self.read_only = read_only
        policy = checkpoint_managers.LatestN(keep)
        if keep_steps:
            policy = checkpoint_managers.AnyPreservationPolicy(
                [policy, checkpoint_managers.CustomSteps(list(keep_steps))]
            )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=None if read_only else policy,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=async_save,
                temporary_path_class=_SlowCommit if os.environ.get(SLOW_COMMIT_ENV) else None,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int, final_step: int) -> bool:
        return step == final_step or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, state, data_iter, *, force: bool = False) -> bool:
        """Starts an async save of `state` and the iterator position after `step` updates."""
        self.manager.wait_until_finished()  # Orbax waits anyway; then the manifests are due
        self._write_manifests()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)
        )
        return self.manager.save(step, args=args, force=force)

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _write_manifests(self) -> None:
        """Writes the manifest of every committed step that lacks one (main process)."""
        if self.read_only or not _is_main():
            return
        for step in self.manager.all_steps():
            step_dir = self._step_dir(step)
            path = os.path.join(step_dir, MANIFEST)
            if atomic.exists(path) or not atomic.exists(os.path.join(step_dir, COMMIT_FILE)):
                continue
            atomic.write_text(path, json.dumps(_files(step_dir), sort_keys=True))

    def quarantine(self, name: str) -> str:
        """Moves `<directory>/<name>` into `<directory>.corrupt/` (never deletes); returns it."""
        dest_root = f"{self.directory}.corrupt"
        dest = os.path.join(dest_root, f"{name}.{time.strftime('%Y%m%d-%H%M%S')}")
        atomic.move(os.path.join(self.directory, name), dest)
        return dest

    def unfinished(self) -> list[str]:
        """Names of the saves in the directory that never committed (see the module docstring)."""
        names = sorted(atomic.listdir(self.directory)) if atomic.isdir(self.directory) else []
        if not atomic.is_remote(self.directory):
            return [n for n in names if TMP_MARK in n]
        committed = {str(s) for s in self.manager.all_steps()}
        return [
            n
            for n in names
            if TMP_MARK in n
            or (
                n.isdigit()
                and n not in committed
                and not atomic.exists(os.path.join(self.directory, n, COMMIT_FILE))
            )
        ]

    def restore_newest(
        self, abstract_state, data_iter, warn: Callable[[str], None] = print
    ) -> tuple[int | None, object]:
        """Restores the newest intact step, moving unusable ones aside with a warning.

        Returns:
          (step, state), or (None, None) if no step is usable.
        """
        if not self.read_only and _is_main():
            for name in self.unfinished():
                dest = self.quarantine(name)
                warn(f"warning: {self.directory}/{name} is an unfinished save; moved to {dest}")
            self.manager.reload()
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = check_step_dir(self._step_dir(step))
            if problem is None:
                try:
                    return step, self.restore(step, abstract_state, data_iter)
                except Exception as e:  # tensorstore raises bare Exceptions on bad files
                    problem = " ".join(str(e).split())[:200] or type(e).__name__
            where = "left in place"
            if not self.read_only and _is_main():
                where = f"moved to {self.quarantine(str(step))}"
                self.manager.reload()
            warn(
                f"warning: checkpoint step {step} in {self.directory} is unusable ({problem}); "
                f"{where}; falling back to the previous step"
            )
        return None, None

    def restore(self, step: int, abstract_state, data_iter):
        """Restores `state` into the shardings of `abstract_state` and rewinds `data_iter`.

        A checkpoint written by a different number of processes holds no iterator state for
        this one (grain keeps one file per process); then the train state is restored and
        `data_iter` is advanced by `step` batches, which is the exact position when both runs
        read the same `data.shards`.
        """
        index, count = jax.process_index(), jax.process_count()
        data_file = self.manager.directory / str(step) / "data" / f"process_{index}-of-{count}.json"
        if not data_file.exists():
            args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
            state = self.manager.restore(step, args=args)["state"]
            if index == 0:
                print(
                    f"checkpoint {step} was written by another process count: train state "
                    f"restored, data iterator advanced by {step} batches"
                )
            for _ in range(step):
                next(data_iter)
            return state
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iter),
        )
        return self.manager.restore(step, args=args)["state"]

    def close(self) -> None:
        self.manager.wait_until_finished()
        self._write_manifests()
        self.manager.close()


def _absolute(directory) -> str:
    directory = os.fspath(directory)
    return directory if "://" in directory else os.path.abspath(directory)


def _is_main() -> bool:
    import jax

    return jax.process_index() == 0


def load_state(directory: str, step: int | None = None):
    """The saved train state as host numpy arrays (newest step by default), for tools and tests."""
    with ocp.CheckpointManager(_absolute(directory)) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]


def load_params(workdir: str, step: int | None = None):
    """A run's parameters as host numpy arrays, from `workdir/checkpoints` (newest by default)."""
    return load_state(os.path.join(workdir, "checkpoints"), step)["params"]


def latest_step(directory: str) -> int | None:
    """Newest checkpoint step in `directory` (None if there is none), without creating anything."""
    if not atomic.isdir(directory):
        return None
    return Checkpointer(directory, read_only=True).latest_step()
