"""Orbax checkpoints of the train state together with the data-iterator position.

One CheckpointManager step holds two items: `state` (the sharded TrainState, restored directly into
its shardings) and `data` (the grain iterator state of this process), so a resumed run continues
with exactly the next batch. Saves are asynchronous: device arrays are copied to host before `save`
returns (so the next step may donate them), files are written in the background, and Orbax commits
a step only when it is complete (temporary directory + rename).
"""

import os

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers


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
        policy = checkpoint_managers.LatestN(keep)
        if keep_steps:
            policy = checkpoint_managers.AnyPreservationPolicy(
                [policy, checkpoint_managers.CustomSteps(list(keep_steps))]
            )
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=None if read_only else policy,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=async_save,
            ),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int, final_step: int) -> bool:
        return step == final_step or (self.every > 0 and step % self.every == 0)

    def save(self, step: int, state, data_iter, *, force: bool = False) -> bool:
        """Starts an async save of `state` and the iterator position after `step` updates."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)
        )
        return self.manager.save(step, args=args, force=force)

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
        self.manager.close()


def load_state(directory: str, step: int | None = None):
    """The saved train state as host numpy arrays (newest step by default), for tools and tests."""
    with ocp.CheckpointManager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return restored["state"]


def latest_step(directory: str) -> int | None:
    """Newest checkpoint step in `directory` (None if there is none), without creating anything."""
    if not os.path.isdir(directory):
        return None
    return Checkpointer(directory, read_only=True).latest_step()
