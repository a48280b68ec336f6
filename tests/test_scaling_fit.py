"""`python -m scaling.fit` and `scaling.fit.analyze` as the user and the sweep runner call them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scaling import synthetic
from scaling.fit import analyze

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAW = {"E": 0.9, "A": 25.0, "B": 120.0, "alpha": 0.25, "beta": 0.33}
PLOTS = ["loss_vs_params.png", "loss_vs_tokens.png", "isoflop.png", "frontier.png", "residuals.png"]
HEADLINE = ["E", "A", "B", "alpha", "beta", "a", "b"]
FAILED = {
    "id": "L9xD999@1M",
    "params": 10**7,
    "tokens": 10**6,
    "status": "failed",
    "error": "FloatingPointError: NaN in train/loss at step 37",
}


def _sweep_rows():
    rows = synthetic.grid_rows(LAW, np.geomspace(1e5, 1e7, 4), np.geomspace(1e6, 1e8, 4), seed=1)
    rows += synthetic.isoflop_rows(LAW, np.geomspace(1e12, 1e14, 3), n_per_budget=5, seed=2)
    return rows[:7] + [FAILED] + rows[7:]


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "scaling.fit", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_on_results_jsonl_writes_fit_plots_and_report(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _sweep_rows()))
    out = tmp_path / "out"
    proc = _run(path, "--out", out, "--bootstrap", 20, "--seed", 3)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in [*HEADLINE, "n_points", "ci", "a_b_source"]:
        assert key in result
    assert result["n_points"] == 31 and result["n_failed"] == 1
    assert result["a_b_source"] == "approach2"
    for key in HEADLINE:
        low, high = result["ci"][key]
        assert low <= result[key] <= high
    assert result["alpha"] == pytest.approx(LAW["alpha"], abs=0.03)
    assert result["a"] == pytest.approx(LAW["beta"] / (LAW["alpha"] + LAW["beta"]), abs=0.05)
    assert sorted(os.listdir(out)) == sorted(["fit.json", "report.md", *PLOTS])  # no temp files
    assert json.loads((out / "fit.json").read_text()) == result
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "FloatingPointError: NaN in train/loss at step 37" in report
    assert "| L9xD999@1M |" in report and "| failed |" in report
    for name in PLOTS:
        assert f"]({name})" in report


def test_cli_on_csv_without_budgets(tmp_path):
    n = np.geomspace(1e5, 1e7, 5)
    d = np.geomspace(1.3e6, 1e8, 4)  # No two C = 6ND within 5%: no IsoFLOP profiles.
    rows = synthetic.grid_rows(LAW, n, d, seed=4)
    path = tmp_path / "results.csv"
    path.write_text(
        "params,tokens,loss\n" + "".join(f"{r['params']},{r['tokens']},{r['loss']}\n" for r in rows)
    )
    proc = _run(path, "--bootstrap", 10, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_points"] == 20
    assert result["a_b_source"] == "approach3"
    assert result["a"] == pytest.approx(result["approach3"]["implied_a"])
    assert result["approach2"]["reason"] == "no IsoFLOP profiles (needs 2)"
    assert result["plots"]["isoflop.png"].startswith("skipped")
    assert not (tmp_path / "out" / "isoflop.png").exists()
    assert "IsoFLOP profiles (isoflop.png) skipped" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("params,loss\n1,2\n", "lacks column(s) tokens"),
        ("params,tokens,loss\n1,2,3\n4,5,6\n", "only 2 usable point(s)"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, content, message):
    path = tmp_path / "results.csv"
    if content is not None:
        path.write_text(content)
    out = tmp_path / "out"
    proc = _run(path, "--out", out)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr
    assert not out.exists()


def test_analyze_without_out_dir_writes_nothing_and_is_deterministic(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = synthetic.grid_rows(LAW, np.geomspace(1e5, 1e7, 3), np.geomspace(1e6, 1e8, 3), seed=1)
    rows = grid[:4] + [FAILED] + grid[4:]  # 9 points and a failed one: the whole analysis runs
    first = analyze(rows, None, n_bootstrap=10, seed=5)
    assert "plots" not in first and first["n_failed"] == 1
    assert os.listdir(tmp_path) == []
    # A second analysis, without the failed row, is the same in every number (bootstrap included):
    # deterministic, and the failed row is ignored.
    failed_free = analyze([r for r in rows if r is not FAILED], None, n_bootstrap=10, seed=5)
    assert failed_free == first | {"n_failed": 0}


def test_scaling_does_not_import_jax():
    code = "import sys, scaling.fit; assert 'jax' not in sys.modules, 'scaling imported jax'"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_law_that_does_not_decrease_gets_no_allocation(tmp_path):
    # Loss grows with N and D: no decreasing power law fits, so no allocation can be derived.
    rows = [
        {"params": n, "tokens": d, "loss": 1.0 + 1e-7 * n + 1e-8 * d}
        for n in np.geomspace(1e5, 1e7, 3)
        for d in np.geomspace(1e6, 1e8, 3)
    ]
    result = analyze(rows, str(tmp_path), n_bootstrap=5)
    assert min(result["alpha"], result["beta"]) <= 0
    assert result["a"] is None and result["allocation"] == []
    report = (tmp_path / "report.md").read_text()
    assert "**Warning**: the fitted law does not decrease" in report
    assert "Not derived: improper fit." in report
