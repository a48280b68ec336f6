"""Numerical faults: a non-finite loss or gradient never reaches the parameters.

In the step (no host sync): the update is skipped and counted on device. In the loop:
`train.nan_policy=skip` goes on and counts; `stop` ends the run naming the step, the metric and
the last good checkpoint, with exit code 3 from the command line.
"""

import contextlib
import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import train.loop
from launch import run as run_cli
from models import decoder
from models.sizes import default_model_config
from objectives.causal_lm import make_loss_fn
from tests.helpers import make_corpus, small_config
from train.checkpoint import load_state
from train.metrics import read_metrics
from train.optim import default_train_config, make_optimizer, schedule_args
from train.state import TrainState
from train.step import make_train_step


def _tiny():
    cfg = default_model_config("tiny")
    cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff = 1, 32, 2, 64
    params = nn.unbox(decoder.init(jax.random.key(0), cfg))
    tcfg = default_train_config()
    tcfg.warmup_steps = 0
    opt, sched = make_optimizer(tcfg), schedule_args(tcfg)
    state = TrainState(
        step=jnp.int32(0),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(1)),
    )
    tokens = np.random.default_rng(0).integers(104, 360, (4, 16)).astype(np.int32)
    return cfg, opt, sched, state, {"tokens": tokens}


def _equal(a, b) -> bool:
    return all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def test_step_skips_a_nonfinite_update_and_counts_it_on_device():
    cfg, opt, sched, state, batch = _tiny()
    loss_fn = make_loss_fn(cfg, decoder.apply)

    def nan_grad_loss(params, batch, rng):
        # Finite loss, NaN gradient: d/dx sqrt(x) at 0 is inf, times 0 is NaN.
        loss, aux = loss_fn(params, batch, rng)
        return loss + 0.0 * jnp.sqrt(params["embed"][0, 0] - params["embed"][0, 0]), aux

    poisoned = jax.jit(make_train_step(loss_fn, opt, poison_step=2))
    bad_grad = jax.jit(make_train_step(nan_grad_loss, opt))

    s1, m1 = poisoned(state, batch, sched)  # step 1: not the poisoned one, a normal update
    assert np.isfinite(m1["loss"]) and not _equal(s1.params, state.params)
    assert np.asarray(s1.nonfinite).tolist() == [0, -1, 0]
    s1p = s1
    s2, m2 = poisoned(s1p, batch, sched)  # step 2: NaN loss and gradients
    assert not np.isfinite(m2["loss"])
    assert _equal(s2.params, s1.params) and _equal(s2.opt_state, s1.opt_state)
    assert int(s2.step) == 2 and not np.array_equal(s2.rng, s1.rng)  # time still moves on
    assert np.asarray(s2.nonfinite).tolist() == [1, 2, 1]  # one skip, at step 2, cause: loss
    s3, m3 = poisoned(s2, batch, sched)
    assert np.isfinite(m3["loss"]) and not _equal(s3.params, s2.params)
    assert np.asarray(s3.nonfinite).tolist() == [1, 2, 1]

    sg, mg = bad_grad(state, batch, sched)
    assert np.isfinite(mg["loss"]) and not np.isfinite(mg["grad_norm"])
    assert _equal(sg.params, state.params)
    assert np.asarray(sg.nonfinite).tolist() == [1, 1, 2]  # cause: gradient norm


def test_skip_policy_goes_on_and_counts_the_skipped_step(tmp_path):
    config = small_config(tmp_path, steps=6)
    config.train.nan_policy = "skip"
    config.train.debug_poison_step = 3
    config.train.ckpt_every = 1
    config.train.keep_ckpts = 10
    config.train.eval_every = 6
    workdir = str(tmp_path / "run")
    summary = train.loop.train_and_evaluate(config, workdir)
    assert summary["step"] == 6 and summary["skipped_steps"] == 1
    assert np.isfinite(summary["eval/loss"])
    states = {s: load_state(f"{workdir}/checkpoints", s) for s in (2, 3, 4)}
    assert _equal(states[3]["params"], states[2]["params"])  # step 3's update was skipped
    assert _equal(states[3]["opt_state"], states[2]["opt_state"])
    assert not _equal(states[4]["params"], states[3]["params"])  # and training went on
    rows = {r["step"]: r for r in read_metrics(f"{workdir}/metrics.jsonl") if "train/loss" in r}
    assert rows[3]["train/loss"] is None  # NaN is written as null
    assert [rows[s]["train/skipped_steps"] for s in range(1, 7)] == [0, 0, 1, 1, 1, 1]
    assert all(np.isfinite(rows[s]["train/loss"]) for s in (1, 2, 4, 5, 6))


def test_stop_policy_stops_naming_the_step_metric_and_last_good_checkpoint(tmp_path):
    glob = make_corpus(str(tmp_path / "corpus"))
    workdir = tmp_path / "run"
    small = small_config(tmp_path)  # the same shrunken model, as command-line overrides
    overrides = {
        "data.glob": glob,
        "data.data_dir": f"{tmp_path}/tfds",
        "data.val_fraction": 0.1,
        "data.seq_len": small.data.seq_len,
        "data.batch_size": 8,
        "model.n_layers": 1,
        "model.d_model": 64,
        "model.n_heads": 2,
        "model.d_ff": 256,
        "train.grad_accum": 1,
        "train.steps": 8,
        "train.ckpt_every": 2,
        "train.eval_every": 8,
        "train.log_every": 1,
        "train.peak_flops": 1e11,
        "train.nan_policy": "stop",
        "train.debug_poison_step": 5,
    }
    argv = ["run.py", "--config=experiments/gpt.py:size=tiny,runlocal", "--compile_cache="]
    argv += [f"--config.{k}={v}" for k, v in overrides.items()] + [f"--workdir={workdir}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = run_cli.cli(argv)
    assert code == 3, err.getvalue()[-3000:]
    line = err.getvalue().strip().splitlines()[-1]
    assert line.startswith("error: train/loss is not finite at step 5")
    assert f"last good checkpoint: {workdir}/checkpoints/4" in line
    assert sorted(int(d.name) for d in (workdir / "checkpoints").iterdir() if d.name.isdigit()) == [
        2,
        4,
    ]
    assert not (workdir / "summary.json").exists()
