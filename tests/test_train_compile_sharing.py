"""Runs that differ only in their learning-rate schedule share one compiled train step.

A sweep trains every model size at several token budgets: a constant-LR trunk and WSD branches
of different lengths, or one cosine run per budget. The schedule is a runtime argument of the
step (train/step.py), so all of them are one XLA program and the persistent compilation cache
compiles it once.
"""

import jax
import numpy as np

from tests.helpers import small_config
from train.loop import Run
from train.optim import make_schedule

SCHEDULES = (
    dict(schedule="constant", steps=20, warmup_steps=2),
    dict(schedule="wsd", steps=60, warmup_steps=5, decay_start=40, decay_shape="1-sqrt"),
    dict(schedule="cosine", steps=35, warmup_steps=0, lr=1e-3, min_lr_ratio=0.3),
)


def _run(tmp_path, **train):
    config = small_config(tmp_path)
    config.train.update(train)
    return Run(config, synthetic_data=True)


def _batch(run):
    c = run.config.data
    tokens = np.random.default_rng(0).integers(0, 256, (c.batch_size, c.seq_len), np.int32)
    local = {
        "tokens": tokens,
        "segment_ids": np.ones_like(tokens),
        "positions": np.broadcast_to(np.arange(c.seq_len, dtype=np.int32), tokens.shape).copy(),
    }
    return run.global_batch(local)


def _hlo(run, batch) -> str:
    with run.activate():
        return run.train_step.lower(run.state, batch, run.schedule_args).as_text()


def test_schedules_and_lengths_lower_to_the_same_program_and_each_gets_its_own_lr(tmp_path):
    runs = [_run(tmp_path, **s) for s in SCHEDULES]
    batch = _batch(runs[0])
    texts = [_hlo(run, batch) for run in runs]
    assert texts[1] == texts[0] and texts[2] == texts[0]
    # One compiled program steps every run along its own schedule.
    with runs[0].activate():
        compiled = runs[0].train_step.lower(runs[0].state, batch, runs[0].schedule_args).compile()
    for run in runs:
        with run.activate():
            state = run.state
            for step in range(3):
                state, metrics = compiled(state, batch, run.schedule_args)
                want = float(make_schedule(run.config.train)(step))
                np.testing.assert_allclose(float(jax.device_get(metrics["lr"])), want, rtol=1e-6)


def test_a_change_of_shape_or_optimizer_is_another_program(tmp_path):
    base = _run(tmp_path)
    batch = _batch(base)
    other = _run(tmp_path, weight_decay=0.0)  # the optimizer's structure: compiled in
    assert _hlo(other, batch) != _hlo(base, batch)
