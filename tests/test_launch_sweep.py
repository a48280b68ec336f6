"""The scaling sweep: grid expansion, the WSD plan, the dry run, and a killed sweep that resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common.atomic import read_rows, write_rows
from experiments import scaling
from studies.sweep import plan
from tests.helpers import FAST_COMPILE, make_corpus
from train.optim import make_schedule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_grid_spans_the_decades_the_fits_need():
    config = scaling.get_config("mode=both")
    points = scaling.get_sweep(config)
    default = scaling.get_sweep(scaling.get_config(""))  # mode=grid
    assert [p["id"] for p in points if p["grid"]] == [p["id"] for p in default]
    grid = [p for p in points if p["grid"]]
    sizes = sorted({p["params"] for p in grid})
    tokens = sorted({p["tokens"] for p in grid})
    assert len(sizes) >= 4 and len(tokens) >= 4
    assert len(grid) == len(sizes) * len(tokens)
    assert np.log10(sizes[-1] / sizes[0]) >= 1.5
    assert np.log10(tokens[-1] / tokens[0]) >= 1.0
    # Fixed aspect ratio: d_model / n_layers is the same on every rung.
    assert len({p["d_model"] // p["n_layers"] for p in points}) == 1
    # IsoFLOP points spend their budget, up to the rounding to whole steps.
    tokens_per_step = config.data.batch_size * config.data.seq_len
    iso = [p for p in points if p["budget"] is not None]
    assert len({p["budget"] for p in iso}) >= 2
    for p in iso:
        assert abs(p["flops"] - p["budget"]) <= p["flops_per_token"] * tokens_per_step / 2 + 1
        assert p["flops"] == pytest.approx(p["flops_per_token"] * p["tokens"])
    assert len({p["id"] for p in points}) == len(points)


def test_wsd_plan_branches_cool_down_from_the_trunk():
    config = scaling.get_config("preset=smoke")
    points = scaling.get_sweep(config)
    pieces = plan(config, points, scaling.point_config, "/w")
    branches = [pc for pc in pieces if pc.kind == "branch"]
    trunks = [pc for pc in pieces if pc.kind == "trunk"]
    assert sorted(pc.point["id"] for pc in branches) == sorted(p["id"] for p in points)
    assert len({pc.workdir for pc in trunks}) == len(config.sweep.ladder)
    trunk_stops: dict = {}
    for pc in trunks:
        trunk_stops.setdefault(pc.workdir, set()).add(pc.stop_at)
    for pc in pieces:
        if pc.kind == "trunk":
            trunk = pc.config.train
            continue
        b = pc.config.train
        fork = pc.init_from[1]
        assert fork == round(b.steps * (1 - b.decay_fraction)) == b.decay_start
        # The trunk just before this branch stopped exactly at the branch point.
        assert pc.init_from[0] == os.path.join(pc.trunk, "checkpoints")
        assert fork in trunk_stops[pc.trunk]
        trunk_lr, branch_lr = make_schedule(trunk), make_schedule(b)
        steps = np.arange(b.steps + 1)
        # Identical up to the branch point, then a cooldown to zero at the point's last step.
        np.testing.assert_array_equal(trunk_lr(steps[: fork + 1]), branch_lr(steps[: fork + 1]))
        assert np.all(np.diff(np.asarray(branch_lr(steps[fork:]))) < 0)
        assert float(branch_lr(b.steps)) == 0.0
        assert trunk.schedule == "constant" and trunk.steps == max(trunk_stops[pc.trunk])


def test_cosine_plan_trains_every_point_from_scratch():
    config = scaling.get_config("preset=smoke,schedule=cosine")
    pieces = plan(config, scaling.get_sweep(config), scaling.point_config, "/w")
    assert {pc.kind for pc in pieces} == {"run"}
    for pc in pieces:
        assert pc.config.train.schedule == "cosine" and pc.init_from is None
        assert pc.config.train.steps == pc.point["steps"] == pc.steps


def _sweep_cmd(tmp_path, workdir, *extra):
    glob = make_corpus(str(tmp_path / "corpus"))
    return [
        sys.executable,
        "launch/run.py",
        "--config",
        "experiments/scaling.py:preset=smoke,bootstrap=20",
        f"--config.data.glob={glob}",
        f"--config.data.data_dir={tmp_path}/tfds",
        "--config.data.val_fraction=0.1",
        f"--workdir={workdir}",
        f"--compile_cache={tmp_path}/cache",
        *extra,
    ]


_ENV = dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu")


def _run_sweep(tmp_path, workdir, *extra, timeout=None):
    """Runs the smoke sweep as users do (1 CPU device); returns the CompletedProcess."""
    return subprocess.run(
        _sweep_cmd(tmp_path, workdir, *extra),
        cwd=ROOT,
        env=_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_dry_run_prints_the_grid_and_trains_nothing(tmp_path):
    workdir = tmp_path / "sweep"
    out = _run_sweep(tmp_path, workdir, "--dry_run", timeout=300)
    assert out.returncode == 0, out.stderr
    for p in scaling.get_sweep(scaling.get_config("preset=smoke")):
        assert p["id"] in out.stdout
    assert "estimated" in out.stdout and "FLOPs" in out.stdout
    assert not workdir.exists()


def test_empty_sweep_exits_2_and_writes_nothing(tmp_path):
    args = ("--config.sweep.mode=grid", "--config.sweep.tokens=()")
    out = _run_sweep(tmp_path, tmp_path / "w", *args, timeout=300)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: the sweep has no points")
    assert not (tmp_path / "w").exists()


@pytest.fixture(scope="module")
def straight_sweep(tmp_path_factory):
    """The smoke sweep run once, uninterrupted: (tmp dir, workdir, stdout)."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    straight = tmp_path / "straight"
    out = _run_sweep(tmp_path, straight)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path, straight, out.stdout


@pytest.mark.slow
def test_smoke_sweep_trains_fits_and_reports(straight_sweep):
    _, straight, stdout = straight_sweep
    rows = read_rows(str(straight / "results.jsonl"))
    points = scaling.get_sweep(scaling.get_config("preset=smoke"))
    assert sorted(rows) == sorted(p["id"] for p in points)
    assert all(r["status"] == "ok" and np.isfinite(r["loss"]) for r in rows.values())
    for name in ("fit.json", "report.md", "loss_vs_params.png", "loss_vs_tokens.png"):
        assert (straight / name).stat().st_size > 0, name
    with open(straight / "fit.json") as f:
        fit = json.load(f)
    assert fit["n_points"] == len(points)
    report = (straight / "report.md").read_text()
    assert "cooldown branches" in report and points[0]["id"] in report
    # Progress across the sweep: one header per run with the sweep's ETA.
    assert stdout.count("== sweep") == len(
        plan(scaling.get_config("preset=smoke"), points, scaling.point_config, "/w")
    )
    assert "eta" in stdout


@pytest.mark.slow
def test_sweep_killed_mid_point_resumes_to_the_same_results(straight_sweep):
    """A sweep SIGKILLed inside a point and rerun ends with the uninterrupted sweep's numbers."""
    tmp_path, straight, _ = straight_sweep
    expected = read_rows(str(straight / "results.jsonl"))
    killed = tmp_path / "killed"
    few = "--config.sweep.bootstrap=2"  # this test checks the points, not the intervals
    proc = subprocess.Popen(
        _sweep_cmd(tmp_path, killed, few),
        cwd=ROOT,
        env=_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill as soon as some point has a checkpoint of its own before its last step: mid-point.
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
        for p in scaling.get_sweep(scaling.get_config("preset=smoke")):
            ckpts = killed / "points" / p["id"] / "checkpoints"
            if ckpts.is_dir() and any(
                d.isdigit() and int(d) < p["steps"] for d in os.listdir(ckpts)
            ):
                victim = p["id"]
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait()
    assert victim is not None, "the sweep finished before it could be killed mid-point"
    partial = read_rows(str(killed / "results.jsonl"))
    assert victim not in partial and len(partial) < len(expected)

    out = _run_sweep(tmp_path, killed, few)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(killed / "results.jsonl") as f:
        ids = [json.loads(line)["id"] for line in f]
    assert sorted(ids) == sorted(expected)  # exactly one line per point
    resumed = read_rows(str(killed / "results.jsonl"))
    for i, row in expected.items():
        assert resumed[i]["status"] == "ok"
        assert resumed[i]["loss"] == row["loss"], i  # bitwise: same batches, same updates
        assert resumed[i]["bits_per_byte"] == row["bits_per_byte"], i


def test_failed_point_is_recorded_the_sweep_goes_on_and_a_rerun_retries_it(tmp_path, monkeypatch):
    """The runner's bookkeeping, with training replaced by a law (no JAX work)."""
    import studies.sweep

    config = scaling.get_config("preset=smoke,bootstrap=20")
    points = {p["id"]: p for p in scaling.get_sweep(config)}
    victim = sorted(points)[4]
    calls = []

    def fake_train(
        cfg, workdir, *, stop_at=None, init_from=None, keep_steps=(), desc="", recipe=None
    ):
        calls.append(desc)
        if desc == victim and fail[0]:
            raise RuntimeError("disk on fire\nsecond line")
        n = cfg.model.n_layers * cfg.model.d_model**2
        loss = 1.0 + 30 / n**0.3 + 40 / (cfg.train.steps * 512) ** 0.3
        return {
            "eval/loss": loss,
            "eval/bits_per_byte": loss / 0.69,
            "compile_s": 0.0,
            "step": stop_at or cfg.train.steps,
            "resumed_from": 0,
        }

    monkeypatch.setattr(studies.sweep, "train_and_evaluate", fake_train)
    fail = [True]
    workdir = str(tmp_path / "sweep")
    studies.sweep.run_sweep(config, "experiments/scaling.py", workdir)
    rows = read_rows(f"{workdir}/results.jsonl")
    assert sorted(rows) == sorted(points)
    assert rows[victim]["status"] == "failed"
    assert rows[victim]["error"] == "RuntimeError: disk on fire"
    assert all(r["status"] == "ok" for i, r in rows.items() if i != victim)
    assert os.path.exists(f"{workdir}/report.md")
    assert "disk on fire" in open(f"{workdir}/report.md").read()

    fail[0], calls[:] = False, []
    studies.sweep.run_sweep(config, "experiments/scaling.py", workdir)
    assert calls.count(victim) == 1 and not set(calls) & (set(points) - {victim})
    rows = read_rows(f"{workdir}/results.jsonl")
    assert all(r["status"] == "ok" for r in rows.values()) and len(rows) == len(points)


@pytest.mark.slow
def test_unfinished_and_preempted_points_are_retried_and_nothing_else(tmp_path, monkeypatch):
    """A point with no row (killed mid-point) and a preempted point are the only ones rerun."""
    import studies.sweep

    config = scaling.get_config("preset=smoke,schedule=cosine,bootstrap=20")
    ids = sorted(p["id"] for p in scaling.get_sweep(config))
    preempt, calls = [ids[3]], []

    def fake_train(
        cfg, workdir, *, stop_at=None, init_from=None, keep_steps=(), desc="", recipe=None
    ):
        calls.append(desc)
        if desc in preempt:
            return {"preempted": True, "step": 1, "resumed_from": 0}
        loss = 1.0 + 30 / (cfg.model.n_layers * cfg.model.d_model**2) ** 0.3
        loss += 40 / (cfg.train.steps * 512) ** 0.3
        return {"eval/loss": loss, "eval/bits_per_byte": loss / 0.69, "compile_s": 0.0}

    monkeypatch.setattr(studies.sweep, "train_and_evaluate", fake_train)
    workdir = str(tmp_path / "sweep")
    out = studies.sweep.run_sweep(config, "experiments/scaling.py", workdir)
    assert out == {"preempted": True}
    rows = read_rows(f"{workdir}/results.jsonl")
    assert ids[3] not in rows  # neither ok nor failed: unfinished
    assert calls[-1] == ids[3] and len(calls) == len(rows) + 1  # the sweep stopped there

    # Drop a finished point's row, as if the sweep had been killed before recording it.
    gone = sorted(rows)[0]
    del rows[gone]
    write_rows(f"{workdir}/results.jsonl", rows)
    preempt[:], calls[:] = [], []
    studies.sweep.run_sweep(config, "experiments/scaling.py", workdir)
    assert sorted(calls) == sorted({gone, *ids} - set(rows))
    rows = read_rows(f"{workdir}/results.jsonl")
    assert sorted(rows) == ids and all(r["status"] == "ok" for r in rows.values())


@pytest.mark.parametrize("full", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_verify_predicts_before_its_run_resumes_it_and_never_retrains_it(
    tmp_path, monkeypatch, full
):
    """verify=K: prediction.json exists, unchanged, before the run beyond the grid starts; a
    preempted verification run is resumed; a finished one is never trained again. `full` also
    fits and writes the report (the fast variant skips the fit, 30-100 s of this test)."""
    import studies.sweep

    if not full:
        monkeypatch.setattr(
            studies.sweep,
            "_analyze",
            lambda c, e, w, rows, verification=None: {"verification": verification},
        )

    config = scaling.get_config("preset=smoke,bootstrap=4,verify=4")
    workdir = str(tmp_path / "sweep")
    prediction_path = f"{workdir}/verify/prediction.json"
    calls, seen, preempt = [], [], [True]

    def truth(cfg):  # the sweep follows an additive law in (N, D): approach 3 is right
        n = 12 * cfg.model.n_layers * cfg.model.d_model**2
        return 1.0 + 30 / n**0.3 + 40 / (cfg.train.steps * 512) ** 0.3

    def fake_train(
        cfg, workdir, *, stop_at=None, init_from=None, keep_steps=(), desc="", recipe=None
    ):
        calls.append(desc)
        if desc.startswith("verify"):
            seen.append(open(prediction_path).read())  # raises if not written yet
            if preempt[0]:
                return {"preempted": True, "step": 1, "resumed_from": 0}
        loss = truth(cfg)
        return {"eval/loss": loss, "eval/bits_per_byte": loss / 0.69, "compile_s": 0.0}

    monkeypatch.setattr(studies.sweep, "train_and_evaluate", fake_train)
    assert studies.sweep.run_sweep(config, "experiments/scaling.py", workdir) == {"preempted": True}
    assert calls[-1].startswith("verify") and not os.path.exists(f"{workdir}/verify/result.json")
    prediction = json.loads(seen[0])
    run = prediction["run"]
    assert run["n_layers"] == max(config.sweep.ladder) + 1
    # The run spends K x the sweep's largest C, up to the rounding to whole steps of 512 tokens.
    assert abs(run["flops"] - 4 * prediction["C_sweep_max"]) <= 256 * run["flops_per_token"]

    preempt[0], calls[:] = False, []
    fit = studies.sweep.run_sweep(config, "experiments/scaling.py", workdir)
    assert calls == [f"verify {run['id']}"]  # the sweep's points are done: only the resumed run
    assert seen[-1] == seen[0]  # the prediction was not redone after the first attempt
    v = fit["verification"]
    cfg = scaling.point_config(config, run)
    assert v["loss"] == pytest.approx(truth(cfg))
    a3 = v["forms"]["approach3"]
    assert a3["rel_err"] == pytest.approx((a3["predicted"] - v["loss"]) / v["loss"])
    lo, hi = a3["interval"]
    assert a3["inside"] == (lo <= v["loss"] <= hi)
    assert v["right"] == min(v["forms"], key=lambda k: abs(v["forms"][k]["rel_err"]))
    if full:
        report = open(f"{workdir}/report.md").read()
        assert "## Verification beyond the grid" in report and run["id"] in report
        saved = json.load(open(f"{workdir}/fit.json"))["verification"]
        assert saved["forms"]["approach3"]["predicted"] == a3["predicted"]

    calls[:] = []
    again = studies.sweep.run_sweep(config, "experiments/scaling.py", workdir)
    assert calls == [] and again["verification"]["loss"] == v["loss"]
