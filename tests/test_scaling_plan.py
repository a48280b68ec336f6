"""The planner: a law's compute-optimal N and D, the ladder shape, the interval, the CLI."""

import json
import math
import os

import numpy as np
import pytest

from scaling import analysis, plan, synthetic, verify
from scaling.bootstrap import LEVELS
from scaling.rows import to_points

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _count_non_embedding(shape: dict) -> float:
    return 12 * shape["n_layers"] * shape["d_model"] ** 2


def test_planner_returns_the_known_optimum_of_a_synthetic_law():
    # alpha = beta and A = B: L(N, C / 6N) is symmetric in N and D, so N_opt = D_opt = sqrt(C/6).
    law = plan.Law("toy", "test", {"E": 1.0, "A": 50.0, "B": 50.0, "alpha": 0.4, "beta": 0.4}, "x")
    c = 6e18
    p = plan.plan(law, c, _count_non_embedding, aspect=64, head_dim=64)
    assert p["N_opt"] == pytest.approx(1e9, rel=1e-9) and p["D_opt"] == pytest.approx(1e9)
    # A brute-force minimum of L(N, C / 6N) over a fine grid of N agrees.
    n = np.geomspace(1e7, 1e11, 200_001)
    loss = 1.0 + 50 / n**0.4 + 50 / (c / (6 * n)) ** 0.4
    assert n[np.argmin(loss)] == pytest.approx(p["N_opt"], rel=1e-3)
    assert p["loss_opt"] == pytest.approx(loss.min(), rel=1e-9)
    # The shape: 12 k (64 k)^2 nearest 1e9 in log space among every rung (k = 27: 0.97e9).
    counts = {k: 12 * k * (64 * k) ** 2 for k in range(1, 100)}
    best = min(counts, key=lambda k: abs(math.log(counts[k] / 1e9)))
    assert p["shape"]["n_layers"] == best == 27
    assert p["shape"]["d_model"] == 64 * best and p["shape"]["n_heads"] == best
    # A target between two rungs nearer the one above it gets that one.
    above = plan.nearest_shape(1.12 * counts[20], _count_non_embedding, 64, 64)
    assert above["n_layers"] == 21 and above["params"] == counts[21]
    assert p["N"] * p["D"] * 6 == pytest.approx(c)  # the budget is spent at the shape
    assert p["interval"] is None  # no bootstrap refits, no interval


def test_epoch_constants_reproduce_chinchillas_allocation():
    """Besiroglu et al.'s approach-3 refit at Chinchilla's budget (5.76e23 FLOPs) gives about
    Chinchilla's 70B parameters and 1.4T tokens (their point: ~20 tokens per parameter, unlike
    Hoffmann et al.'s own approach-3 constants, which give about 32B on 3T)."""
    count = lambda s: 12 * s["n_layers"] * s["d_model"] ** 2  # noqa: E731
    epoch = plan.plan(plan.published_law("epoch"), 5.76e23, count, 128, 128)
    assert epoch["N_opt"] == pytest.approx(72.2e9, rel=0.01)
    assert epoch["D_opt"] == pytest.approx(1.33e12, rel=0.01)
    assert epoch["N_opt"] == pytest.approx(70e9, rel=0.05)
    assert epoch["D_opt"] == pytest.approx(1.4e12, rel=0.06)
    assert 18 < epoch["tokens_per_param"] < 20
    hoffmann = plan.plan(plan.published_law("chinchilla"), 5.76e23, count, 128, 128)
    assert hoffmann["N_opt"] == pytest.approx(32.2e9, rel=0.01)
    assert hoffmann["tokens_per_param"] > 80


def test_fit_json_law_keeps_its_bootstrap_refits_for_the_interval():
    law_values = {"E": 1.2, "A": 40.0, "B": 60.0, "alpha": 0.35, "beta": 0.3}
    rows = synthetic.grid_rows(
        law_values, np.geomspace(1e4, 1e6, 4), np.geomspace(1e6, 1e7, 4), noise=0.003
    )
    points = to_points(rows)
    law_fit, block = analysis.approach3(points, 12, np.random.default_rng(0), LEVELS)
    fit = law_fit.values() | {"approach3": block}  # as fit.json holds them
    law = plan.law_from_fit(fit, "fit.json")
    assert law.samples.shape == (fit["approach3"]["bootstrap_ok"], 5)
    p = plan.plan(law, 1e15, _count_non_embedding, aspect=32, head_dim=32)
    lo, hi = p["interval"]
    assert lo < hi
    # The interval is over refits of the same rows: the truth at the plan's (N, D) lies near it.
    truth = synthetic.law_loss(np.array(p["N"]), np.array(p["D"]), law_values)
    assert lo * 0.97 < truth < hi * 1.03
    with pytest.raises(plan.PlanError, match="improper"):
        plan.law_from_fit(fit | {"alpha": -0.1}, "fit.json")


def test_verify_score_names_the_right_form_and_the_interval_verdict():
    prediction = {
        "selected_in_advance": "approach3",
        "forms": {
            "approach3": {"predicted": 2.2, "interval": [2.1, 2.3]},
            "kaplan_joint": {"predicted": 1.98, "interval": [1.9, 2.05]},
        },
    }
    v = verify.score(prediction, {"loss": 2.0})
    assert v["right"] == "kaplan_joint"
    assert v["forms"]["approach3"]["rel_err"] == pytest.approx(0.1)
    assert v["forms"]["approach3"]["inside"] is False
    assert v["forms"]["kaplan_joint"]["inside"] is True


def _main(argv, capsys):
    from launch.plan import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_prints_the_plan_and_exits_2_on_bad_input(tmp_path, capsys):
    code, out, err = _main(["--law", "epoch", "--flops", "5.76e23", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["N_opt"] == pytest.approx(72.2e9, rel=0.01) and r["n_definition"] == "total"
    assert r["shape"]["d_model"] == 128 * r["shape"]["n_layers"]

    bad_json = tmp_path / "fit.json"
    bad_json.write_text("{not json")
    improper = tmp_path / "improper.json"
    improper.write_text(json.dumps({"E": 1, "A": 1, "B": 1, "alpha": 0.0, "beta": 0.3}))
    written = tmp_path / "planned_x.py"
    for argv in (
        ["--law", "chinchilla", "--flops", "-1"],
        ["--law", "chinchilla", "--flops", "lots"],
        ["--law", "nope", "--flops", "1e21"],
        ["--law", str(bad_json), "--flops", "1e21"],
        ["--law", str(improper), "--flops", "1e21"],
        ["--law", "chinchilla", "--flops", "1e21", "--topology", "v5p-7"],
        ["--law", "chinchilla", "--flops", "1e21", "--write", str(written)],
        ["--law", "chinchilla", "--flops", "1e21", "--batch_rows", "64"],
        ["--law", "chinchilla", "--flops", "1e21", "--aspect", "100", "--head_dim", "64"],
        ["--flops", "1e21"],
    ):
        code, out, err = _main(argv, capsys)
        assert code == 2, argv
        assert out == "" and len(err.strip().splitlines()) == 1, (argv, err)
        assert err.startswith("error: "), err
    assert not written.exists()


@pytest.mark.slow
def test_cli_compiles_the_plan_for_a_slice_and_writes_a_runnable_config(tmp_path, capsys):
    """A small fit.json law on v5p-8: the chosen mesh fits, and the written file loads with it."""
    pytest.importorskip("libtpu", reason="needs jax[tpu] (requirements-test.txt)")
    law = {"E": 1.0, "A": 30.0, "B": 40.0, "alpha": 0.3, "beta": 0.3}
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(law))
    out_py = tmp_path / "planned_small.py"
    argv = ["--law", str(path), "--flops", "1e15", "--topology", "v5p-8", "--meshes", "1"]
    argv += ["--batch_rows", "6"]  # 8 after rounding to whole rows per chip (a quicker compile)
    code, out, err = _main(
        [*argv, "--aspect", "64", "--head_dim", "64", "--write", str(out_py), "--json"], capsys
    )
    assert code == 0, err
    r = json.loads(out)
    t = r["topology"]
    assert t["fits"] and t["chips"] == 4 and t["hbm_gib_per_chip"] < 95
    assert t["batch_rows"] == 8 and t["tokens_per_step"] == 8 * 2048
    assert t["steps"] == math.ceil(r["D"] / t["tokens_per_step"])
    assert t["chip_hours"] == pytest.approx(t["steps"] * t["step_time_s"] / 3600 * 4)
    from launch.cluster import load_config

    config = load_config(str(out_py), [])
    assert config.model.n_layers == r["shape"]["n_layers"]
    assert dict(config.parallel.mesh) == t["mesh"]
    assert config.train.steps == t["steps"]
    assert config.data.batch_size == 8
