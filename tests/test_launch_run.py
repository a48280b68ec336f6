"""The entry point as users call it: `python launch/run.py --config ... --workdir ...`."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import FAST_COMPILE, TINY_RUN, make_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, tmp_path):
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "launch/run.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _common(tmp_path):
    glob = make_corpus(str(tmp_path / "corpus"))
    return [
        "--config",
        "experiments/gpt.py:size=tiny,runlocal",
        f"--config.data.glob={glob}",
        f"--config.data.data_dir={tmp_path}/tfds",
        "--config.data.val_fraction=0.1",
        f"--compile_cache={tmp_path}/cache",
        *(f"--config.{k}={v}" for k, v in TINY_RUN.items()),
    ]


@pytest.mark.slow
def test_run_trains_and_writes_its_files(tmp_path):
    workdir = tmp_path / "run"
    proc = _run([*_common(tmp_path), f"--workdir={workdir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "bits/byte" in proc.stdout
    for name in ["config.json", "metrics.jsonl", "summary.json", "checkpoints", "tb"]:
        assert (workdir / name).exists(), name
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["step"] == 20 and summary["eval/bits_per_byte"] < 6.0
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["model/params_total"] > 0
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses[-1] < losses[0]
    # Rerunning the finished command does nothing and keeps the results.
    again = _run([*_common(tmp_path), f"--workdir={workdir}"], tmp_path)
    assert again.returncode == 0 and "already holds a finished run" in again.stdout
    # The same config in a new workdir compiles nothing new: every program is a cache hit.
    cached = sorted(os.listdir(tmp_path / "cache"))
    assert cached and "compiled in" in proc.stdout
    second = _run([*_common(tmp_path), f"--workdir={tmp_path}/second"], tmp_path)
    assert second.returncode == 0 and sorted(os.listdir(tmp_path / "cache")) == cached


def test_bad_input_fails_fast_with_one_line(tmp_path):
    workdir = tmp_path / "bad"
    proc = _run([*_common(tmp_path), f"--workdir={workdir}", "--config.model.n_heads=3"], tmp_path)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: model.d_model=64 is not divisible by model.n_heads=3")
    )
    assert not workdir.exists()  # nothing half-written
    typo = _run([*_common(tmp_path), f"--workdir={workdir}", "--config.train.stepz=5"], tmp_path)
    assert typo.returncode != 0 and "stepz" in typo.stderr
