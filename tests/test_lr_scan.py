"""The per-size learning-rate scan (experiments/lr_scan.py) and the sweep's `lrs` override."""

import numpy as np
import pytest

from experiments import lr_scan, scaling


def test_best_lr_is_the_vertex_of_a_parabola_in_log_lr():
    lrs = np.array([1e-3, 2e-3, 4e-3, 8e-3])
    true = 3e-3  # loss = 2 + (log lr - log 3e-3)^2: the vertex between the 2nd and 3rd lr
    losses = 2 + (np.log(lrs) - np.log(true)) ** 2
    assert lr_scan.best_lr(lrs, losses) == pytest.approx(true, rel=1e-9)
    # At the edge of the grid the best scanned lr itself; a diverged (NaN) run never wins.
    assert lr_scan.best_lr(lrs, np.array([1.0, 2.0, 3.0, 4.0])) == 1e-3
    assert lr_scan.best_lr(lrs, np.array([3.0, 2.0, 1.0, np.nan])) == 4e-3


def test_tuned_lrs_reads_the_stage_rows_per_size():
    config = lr_scan.get_config("preset=smoke,multiples=0.5/1/2")
    rows = {}
    for point, m in lr_scan._points(config):
        loss = 3.0 + (np.log(m) - np.log(1.2)) ** 2  # every size wants 1.2 x its width rule
        rows[point["id"]] = {"status": "ok", "eval/loss": loss}
    best = lr_scan.tuned_lrs(config, rows)
    assert list(best) == ["L1xD32", "L2xD64", "L3xD96"]
    for k, (lr, _) in zip((1, 2, 3), best.values(), strict=True):
        assert lr == pytest.approx(1.2 * scaling.peak_lr(config.sweep, k), rel=1e-9)
    assert "lrs=" in lr_scan.report(config, rows)


def test_sweep_lrs_override_the_width_rule_and_extrapolate_beyond_the_ladder():
    default = scaling.get_config("preset=smoke")
    assert [p["lr"] for p in scaling.get_sweep(default)][::2] == pytest.approx(
        [3e-3 * (128 / d) ** 0.5 for d in (32, 64, 96)]
    )
    config = scaling.get_config("preset=smoke,lrs=0.008/0.004/0.002")
    assert [p["lr"] for p in scaling.get_sweep(config)][::2] == [0.008, 0.004, 0.002]
    # The rung after the ladder (d_model 128): the power law in width through the three.
    slope, icept = np.polyfit(np.log([32, 64, 96]), np.log([0.008, 0.004, 0.002]), 1)
    expected = np.exp(icept + slope * np.log(128))
    assert scaling.verify_point(config, 1e5)["lr"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="lrs="):
        scaling.get_config("preset=smoke,lrs=0.008/0.004")
