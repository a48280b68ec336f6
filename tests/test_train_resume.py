"""Resume is exact: 20 steps == 10 steps, stop, resume, 10 steps (bitwise, same batches)."""

import json

import jax
import numpy as np

import train.loop
from tests.helpers import small_config
from train.checkpoint import load_state
from train.metrics import read_metrics


class _Recording:
    """Wraps the train iterator, recording every batch it hands out."""

    def __init__(self, it, log):
        self.it, self.log = it, log

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.it)
        self.log.append({k: np.array(v) for k, v in batch.items()})
        return batch

    # grain's checkpoint handler speaks bytes to iterators that are not its own DatasetIterator.
    def get_state(self) -> bytes:
        return json.dumps(self.it.get_state()).encode()

    def set_state(self, state: bytes):
        self.it.set_state(json.loads(state))

    def start_prefetch(self):
        pass


def test_resume_is_bitwise_exact(tmp_path, monkeypatch):
    seen: list = []
    make = train.loop.make_train_iterator
    monkeypatch.setattr(
        train.loop, "make_train_iterator", lambda *a, **k: _Recording(make(*a, **k), seen)
    )
    config = small_config(tmp_path, steps=20)

    straight = str(tmp_path / "straight")
    train.loop.train_and_evaluate(config, straight)
    batches_straight, seen[:] = list(seen), []

    resumed = str(tmp_path / "resumed")
    first = train.loop.train_and_evaluate(config, resumed, stop_at=10)
    assert first["step"] == 10
    second = train.loop.train_and_evaluate(config, resumed)
    assert second["resumed_from"] == 10
    batches_resumed = list(seen)

    assert len(batches_straight) == len(batches_resumed) == 20
    for a, b in zip(batches_straight, batches_resumed, strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])

    s1 = load_state(f"{straight}/checkpoints", 20)
    s2 = load_state(f"{resumed}/checkpoints", 20)
    leaves1, leaves2 = jax.tree.leaves(s1), jax.tree.leaves(s2)
    assert len(leaves1) == len(leaves2) > 10
    for x, y in zip(leaves1, leaves2, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # Metrics: every step once, identical losses.
    def losses(workdir):
        rows = [r for r in read_metrics(f"{workdir}/metrics.jsonl") if "train/loss" in r]
        return [r["step"] for r in rows], [r["train/loss"] for r in rows]

    steps1, loss1 = losses(straight)
    steps2, loss2 = losses(resumed)
    assert steps1 == steps2 == list(range(1, 21))
    assert loss1 == loss2
    assert loss1[-1] < loss1[0]
