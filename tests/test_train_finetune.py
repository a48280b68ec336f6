"""Task batches (data/tasks.py) train a tiny encoder classifier through the loop's Run."""

import os

import jax
import numpy as np
import pytest

from data import tasks
from experiments.classify import get_config
from models import encoder
from train.loop import Run


@pytest.mark.slow  # two compiles (train and eval step) of a tiny encoder
def test_label_batch_trains_and_evaluates_accuracy(tmp_path):
    # Two packages whose files read differently, so two steps on one batch can separate them.
    for package, line in (("a", "x = 1\n"), ("b", "print('zz')\n")):
        os.makedirs(tmp_path / package)
        for i in range(8):
            (tmp_path / package / f"m{i}.py").write_text(line * 40)
    config = get_config("phase=scratch,classes=2,runlocal")
    config.data.task.root = str(tmp_path)
    config.data.task.val_percent = 50
    config.data.seq_len = config.model.max_len = 32
    config.model.update(n_layers=1, d_model=32, n_heads=2, d_ff=64)
    config.train.update(lr=3e-3, warmup_steps=0, grad_accum=1, weight_decay=0.0)
    run = Run(config)
    assert run.task == "packages" and run.batch_keys["labels"] == 1
    it = tasks.make_train_iterator(config.data, run.tokenizer, seed=0)
    batch = run.global_batch(next(it))
    state, losses = run.state, []
    with run.activate():
        for _ in range(2):  # the same batch twice: the second loss must be lower
            state, metrics = run.train_step(state, batch, run.schedule_args)
            losses.append(float(metrics["loss"]))
    assert float(metrics["tokens"]) == config.data.batch_size
    assert losses[1] < losses[0]
    eval_local = tasks.make_eval_batches(config.data, run.tokenizer, num_batches=1)
    ev = run.evaluate(state.params, [run.global_batch(b) for b in eval_local])
    # Reference: the encoder's own class logits on host, argmax against the labels.
    params = jax.device_get(state.params)
    logits = np.asarray(encoder.apply(params, eval_local[0], config.model)["class_logits"])
    real = eval_local[0]["labels"] >= 0
    want = (logits.argmax(-1) == eval_local[0]["labels"])[real].mean()
    np.testing.assert_allclose(ev["accuracy"], want, atol=1e-6)
    assert ev["loss"] > 0
