"""The muP studies: the LR x width grid's members are plain runs of the loop, its points and optima;
the coordinate check through the loop is flat under muP and grows under SP."""

import json
import math
import os

import numpy as np
import pytest

from experiments import coord_check, mup_transfer
from studies.mup import optima, slopes, transfer_points
from studies.stages import run_study
from tests.helpers import make_corpus


def test_grid_members_are_the_runs_they_stand_for():
    config = mup_transfer.get_config("widths=32/64,lr_exps=-7/-6,seeds=2,steps=5")
    stages = mup_transfer.get_stages(config, "/nonexistent")
    assert [s.name for s in stages[:4]] == [
        "sp_d32_lr2e-7_s0",
        "sp_d32_lr2e-6_s0",
        "sp_d32_lr2e-7_s1",
        "sp_d32_lr2e-6_s1",
    ]
    assert len(stages) == 2 * 2 * 2 * 2 + 1 and stages[-1].action is not None
    by_name = {s.name: s for s in stages}
    c = by_name["mup_d64_lr2e-6_s1"].config
    assert c.kind == "train" and "transfer" not in c
    assert (c.model.d_model, c.model.d_ff, c.model.mup.enabled, c.model.mup.base_width) == (
        64,
        256,
        True,
        32,
    )
    assert c.train.lr == 2.0**-6 and c.seed == config.seed + 1 and c.train.steps == 5
    assert not by_name["sp_d64_lr2e-6_s1"].config.model.mup.enabled
    assert all(s.record_nonfinite for s in stages[:-1])
    # Members of one (parametrization, width) differ only in the step's runtime inputs (the LR
    # schedule) and the seed, so they share one compiled step.
    a, b = by_name["mup_d64_lr2e-7_s0"].config, by_name["mup_d64_lr2e-6_s1"].config
    a.train.lr, a.seed = b.train.lr, b.seed
    assert a.to_dict() == b.to_dict()


def test_points_average_seeds_and_a_missing_seed_is_diverged():
    members = [
        dict(stage=f"mup_d32_lr2e{e}_s{s}", parametrization="mup", width=32, lr_exp=e, seed=s)
        for e in (-5, -4)
        for s in (0, 1)
    ]
    rows = {
        "mup_d32_lr2e-5_s0": {"eval/loss": 2.0, "eval/bits_per_byte": 3.0},
        "mup_d32_lr2e-5_s1": {"eval/loss": 2.5, "eval/bits_per_byte": 3.5},
        "mup_d32_lr2e-4_s0": {"eval/loss": 1.0, "eval/bits_per_byte": 1.5},
    }  # seed 1 of 2^-4 diverged: it has no 'ok' row
    points = {p["lr_exp"]: p for p in transfer_points(members, rows)}
    assert points[-5]["status"] == "ok" and points[-5]["eval_loss"] == 2.25
    assert points[-5]["bits_per_byte"] == 3.25 and points[-5]["seed_losses"] == [2.0, 2.5]
    assert points[-4]["status"] == "diverged" and points[-4]["eval_loss"] is None
    assert points[-4]["seed_losses"] == [1.0, None] and points[-4]["id"] == "mup_d32_lr2e-4"
    assert optima(list(points.values())) == {"mup": {32: -5}}  # the best finite mean
    points[-5].update(eval_loss=math.inf)
    assert optima(list(points.values())) == {}


def test_slopes_are_the_log_log_fit():
    table = {16: {"a": 1.0, "b": 3.0}, 32: {"a": 2.0, "b": 3.0}, 64: {"a": 4.0, "b": 3.0}}
    got = slopes(table)
    assert got["a"] == pytest.approx(1.0) and got["b"] == pytest.approx(0.0, abs=1e-12)


def test_bad_grid_arguments_fail_by_name():
    with pytest.raises(ValueError, match="lr_exps"):
        mup_transfer.get_config("lr_exps=-2/-5")
    with pytest.raises(ValueError, match="seeds"):
        mup_transfer.get_config("seeds=0")
    with pytest.raises(ValueError, match="widths"):
        coord_check.get_config("widths=32")


def _local(config, tmp_path):
    config.data.glob = make_corpus(str(tmp_path / "corpus"), n_files=40)
    config.data.data_dir = str(tmp_path / "tfds")
    config.data.val_fraction = 0.2
    config.train.peak_flops = 1e11
    return config


@pytest.mark.slow
def test_transfer_study_writes_points_optima_and_plot(tmp_path):
    config = _local(mup_transfer.get_config("widths=32/64,lr_exps=-8/-6,seeds=1,steps=3"), tmp_path)
    config.transfer.lr_exps = (-8, -6)
    config.train.eval_batches = 2
    workdir = str(tmp_path / "grid")
    rows = run_study(config, mup_transfer, workdir)["rows"]
    out = os.path.join(workdir, "transfer")
    with open(os.path.join(out, "points.jsonl")) as f:
        points = [json.loads(line) for line in f]
    assert len(points) == 2 * 2 * 2
    for p in points:  # each point is its member run's own final eval loss
        member = rows[f"{p['id']}_s0"]
        assert p["eval_loss"] == member["eval/loss"] and member["step"] == 3
    with open(os.path.join(out, "optima.json")) as f:
        assert json.load(f) == {
            k: {str(w): e for w, e in v.items()} for k, v in optima(points).items()
        }
    assert os.path.getsize(os.path.join(out, "mup_transfer.png")) > 0
    # One compile per (parametrization, width): the second LR's step came from the cache.
    assert rows["sp_d32_lr2e-6_s0"]["compile_s"] < rows["sp_d32_lr2e-8_s0"]["compile_s"] / 3


# Slope of log(mean |activation|) against log(width) over 3 widths (TP5's coordinate check), one
# layer, 3 Adam steps at LR 0.02, through the loop on the stdlib corpus. Measured: muP |slope| at
# most 0.15 (q, k, v, attention output, MLP pre-activation, logits); SP slopes 0.58-0.97.
MUP_MAX_ABS_SLOPE, SP_MIN_SLOPE = 0.4, 0.5


@pytest.mark.slow
def test_coord_check_is_flat_under_mup_and_grows_under_sp(tmp_path):
    config = coord_check.get_config("widths=16/32/64,layers=1,steps=3,seq_len=32")
    workdir = str(tmp_path / "coord")
    result = run_study(_local(config, tmp_path), coord_check, workdir)["rows"]["activations"]
    mup_slopes = np.array(list(result["mup"]["slopes"].values()))
    sp_slopes = np.array(list(result["sp"]["slopes"].values()))
    assert len(mup_slopes) == 5 + 1  # q, k, v, attn_out, mlp_in of the layer, and the logits
    assert np.abs(mup_slopes).max() < MUP_MAX_ABS_SLOPE, result["mup"]["slopes"]
    assert sp_slopes.min() > SP_MIN_SLOPE, result["sp"]["slopes"]
    assert os.path.exists(os.path.join(workdir, "activations", "coord_check.png"))
