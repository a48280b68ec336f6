"""Orbax checkpoints of the train state together with the data-iterator position.

One CheckpointManager step holds two items: `state` (the sharded TrainState, restored directly into
its shardings) and `data` (the grain iterator state of this process), so a resumed run continues
with exactly the next batch. Saves are asynchronous: device arrays are copied to host before `save`
returns (so the next step may donate them), files are written in the background, and Orbax commits
a step only when it is complete (temporary directory + rename).
"""

import grain
import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every `every` steps and at the end; restores the newest step on start."""

    def __init__(self, directory: str, *, keep: int = 2, every: int = 500, async_save: bool = True):
        self.every = every
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
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
        """Restores `state` into the shardings of `abstract_state` and rewinds `data_iter`."""
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
