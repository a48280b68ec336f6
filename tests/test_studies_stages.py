"""studies/stages.py: rows per stage, the report, skipping finished stages, resuming after a
failure, recording a diverged run, and refusing duplicate stage names."""

import json
import os
import types

import ml_collections
import numpy as np
import pytest

import studies.stages as stages
from studies.stages import Stage, run_study
from tests.helpers import small_config
from train.validate import ConfigError


def _study_config():
    return ml_collections.ConfigDict({"kind": "study", "seed": 0})


def _toy(run_config, calls: list, fail: bool = False, poisoned=None):
    """An experiment module: a 4-step run, an action reading its row, then (if given) a run
    that stops on a non-finite loss."""

    def score(stage_dir, rows):
        calls.append(sorted(rows))
        if fail:
            raise RuntimeError("the scorer broke")
        assert os.path.isdir(stage_dir)
        return {"twice_loss": 2 * rows["train"]["eval/loss"]}

    def get_stages(config, workdir):
        out = [Stage("train", run_config), Stage("score", action=score)]
        return out + ([Stage("nan", poisoned, record_nonfinite=True)] if poisoned else [])

    def report(config, rows):
        return f"score {rows['score']['twice_loss']:.6f}; nan {rows.get('nan', {}).get('status')}"

    return types.SimpleNamespace(get_stages=get_stages, report=report)


def _rows(workdir):
    with open(os.path.join(workdir, "results.jsonl")) as f:
        return {r["stage"]: r for r in map(json.loads, f)}


def test_rows_report_skip_and_resume_after_a_failing_stage(tmp_path, monkeypatch):
    run_config = small_config(tmp_path, steps=4)
    run_config.train.update(eval_every=4, ckpt_every=4, log_every=2)
    workdir = str(tmp_path / "study")
    calls: list = []
    # The action raises: the run rows before it stay, no report is written.
    with pytest.raises(RuntimeError, match="scorer broke"):
        run_study(_study_config(), _toy(run_config, calls, fail=True), workdir)
    rows = _rows(workdir)
    assert set(rows) == {"train"}
    assert rows["train"]["status"] == "ok" and rows["train"]["step"] == 4
    assert np.isfinite(rows["train"]["eval/loss"])
    assert calls == [["train"]]
    assert not os.path.exists(os.path.join(workdir, "report.md"))
    with open(os.path.join(workdir, "train", "summary.json")) as f:
        assert json.load(f)["eval/loss"] == rows["train"]["eval/loss"]

    # The rerun resumes at the action: no run stage trains again.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run stage was trained again")

    monkeypatch.setattr(stages, "train_and_evaluate", no_training)
    out = run_study(_study_config(), _toy(run_config, calls), workdir)
    rows = _rows(workdir)
    assert rows["train"] == out["rows"]["train"]
    assert rows["score"]["twice_loss"] == 2 * rows["train"]["eval/loss"]
    with open(os.path.join(workdir, "report.md")) as f:
        assert f.read() == f"score {2 * rows['train']['eval/loss']:.6f}; nan None\n"

    # Everything finished: a rerun runs nothing (the failing action would raise).
    n = len(calls)
    run_study(_study_config(), _toy(run_config, calls, fail=True), workdir)
    assert len(calls) == n and _rows(workdir) == rows


@pytest.mark.slow
def test_a_nonfinite_run_is_recorded_as_diverged_and_the_study_goes_on(tmp_path):
    run_config = small_config(tmp_path, steps=4)
    run_config.train.update(eval_every=4, ckpt_every=4, log_every=1)
    poisoned = run_config.copy_and_resolve_references()
    poisoned.train.debug_poison_step = 2
    calls: list = []
    workdir = str(tmp_path / "study")
    run_study(_study_config(), _toy(run_config, calls, poisoned=poisoned), workdir)
    rows = _rows(workdir)
    assert rows["nan"]["status"] == "diverged" and "at step 2" in rows["nan"]["error"]
    with open(os.path.join(workdir, "report.md")) as f:
        assert f.read().endswith("; nan diverged\n")
    # Without record_nonfinite the same stop is the study's error.
    module = types.SimpleNamespace(
        get_stages=lambda config, workdir: [Stage("nan2", poisoned)], report=lambda c, r: ""
    )
    with pytest.raises(stages.NonFiniteError, match="at step 2"):
        run_study(_study_config(), module, str(tmp_path / "study2"))


def test_duplicate_stage_names_are_a_one_line_error(tmp_path):
    noop = lambda stage_dir, rows: {}
    module = types.SimpleNamespace(
        get_stages=lambda config, workdir: [
            Stage("a", action=noop),
            Stage("b", action=noop),
            Stage("a", action=noop),
        ],
        report=lambda config, rows: "",
    )
    with pytest.raises(ConfigError) as e:
        run_study(_study_config(), module, str(tmp_path / "study"))
    assert str(e.value) == "study stages must have distinct names; 'a' appears more than once"
    assert not os.path.exists(tmp_path / "study")  # nothing written
