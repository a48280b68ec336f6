"""The LR-transfer grid's vmapped members are the runs they stand for, seed by seed."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import objectives
from data.pipeline import BATCH_KEYS, make_eval_batches, make_train_iterator
from experiments.mup_transfer import get_config, point_config
from launch.mup_transfer import optima, train_lr_group
from models import get_model
from tests.helpers import make_corpus
from train.optim import make_optimizer, make_schedule

LR_EXPS = (-7, -4)


@pytest.fixture(scope="module")
def grid_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mup_transfer")
    config = get_config("runlocal")
    config.data.glob = make_corpus(str(tmp / "corpus"), n_files=40)
    config.data.data_dir = str(tmp / "tfds")
    config.data.val_fraction = 0.2
    config.train.steps = 4
    return config


def _reference_run(config, seed_offset: int) -> float:
    """One point trained alone at its own LR, a plain loop (no vmap, no stacked schedules)."""
    model = get_model(config.model.family)
    loss_fn = objectives.get_loss_fn(config.objective)(config.model, model.apply)
    opt = make_optimizer(config.train, config.model)
    params = nn.unbox(model.init(jax.random.key(config.seed + seed_offset), config.model))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, batch, lr):
        grads = jax.grad(lambda p: loss_fn(p, batch, None)[0])(params)
        updates, opt_state = opt.update(grads, opt_state, params, lr=lr)
        return optax.apply_updates(params, updates), opt_state

    it = make_train_iterator(config.data, seed=config.seed + seed_offset)
    schedule = make_schedule(config.train)
    for t in range(config.train.steps):
        batch = {k: jnp.asarray(v) for k, v in next(it).items() if k in BATCH_KEYS}
        params, opt_state = step(params, opt_state, batch, schedule(t))
    nll = tokens = 0.0
    for b in make_eval_batches(config.data, num_batches=config.train.eval_batches):
        aux = loss_fn(params, {k: jnp.asarray(v) for k, v in b.items() if k in BATCH_KEYS}, None)[1]
        nll, tokens = nll + float(aux["nll_sum"]), tokens + float(aux["tokens"])
    return nll / tokens


@pytest.mark.slow
def test_vmapped_members_equal_separate_runs_per_lr_and_seed(grid_config):
    width = 64  # twice the base width: muP's LR multipliers and output scale are not 1
    out = train_lr_group(
        point_config(grid_config, "mup", width, 0), [2.0**e for e in LR_EXPS], seeds=2
    )
    assert len(out) == 2 and all(len(per_lr) == len(LR_EXPS) for per_lr in out)
    # Member (seed 1, second LR): a wrong seed or LR index anywhere in the stacking shows here.
    ref = _reference_run(point_config(grid_config, "mup", width, LR_EXPS[1]), 1)
    np.testing.assert_allclose(out[1][1][0], ref, rtol=2e-5)
    assert abs(out[1][0][0] - out[1][1][0]) > 1e-3  # the two LRs differ: the check is not vacuous
    # Different seeds are different runs (init and data order), not copies.
    assert abs(out[0][0][0] - out[1][0][0]) > 1e-4


def test_optima_take_the_lowest_finite_mean_loss():
    rows = [
        dict(parametrization="mup", width=32, lr_exp=-5, status="ok", eval_loss=2.0),
        dict(parametrization="mup", width=32, lr_exp=-4, status="ok", eval_loss=1.9),
        dict(parametrization="mup", width=32, lr_exp=-3, status="diverged", eval_loss=None),
        dict(parametrization="sp", width=32, lr_exp=-6, status="ok", eval_loss=math.inf),
        dict(parametrization="sp", width=32, lr_exp=-7, status="ok", eval_loss=2.5),
    ]
    assert optima(rows) == {"mup": {32: -4}, "sp": {32: -7}}


def test_bad_grid_arguments_fail_by_name():
    with pytest.raises(ValueError, match="lr_exps"):
        get_config("lr_exps=-2/-5")
    with pytest.raises(ValueError, match="seeds"):
        get_config("seeds=0")
