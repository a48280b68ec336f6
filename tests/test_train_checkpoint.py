"""Corrupt and partial checkpoints: detected, moved aside (never deleted), the previous step used.

One real 20-step run saves steps 10 and 20; each case damages a copy of its checkpoints the way a
crash or a bad disk would and restores through `Checkpointer.restore_newest`, the path the loop
takes on start; one case goes through the loop and must end bitwise where the clean run ended.
"""

import glob
import os
import shutil

import jax
import numpy as np
import pytest

import train.loop
from data.pipeline import make_train_iterator
from tests.helpers import small_config
from train.checkpoint import MANIFEST, Checkpointer, load_state


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    config = small_config(tmp, steps=20)
    config.train.eval_every = 20
    workdir = str(tmp / "clean")
    train.loop.train_and_evaluate(config, workdir)
    return tmp, config, workdir


def _target(state_tree):
    """Restore target: the saved arrays' shapes and dtypes on one device (Orbax reshards)."""
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=dev), state_tree)


def _largest_array_file(step_dir: str) -> str:
    files = glob.glob(f"{step_dir}/state/**/d/*", recursive=True)
    return max(files, key=os.path.getsize)


def _truncate(path: str) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


def _restore(base, damage, tmp_path):
    _, config, workdir = base
    ckpt_dir = str(tmp_path / "checkpoints")
    shutil.copytree(f"{workdir}/checkpoints", ckpt_dir)
    damage(ckpt_dir)
    warnings: list[str] = []
    ckpt = Checkpointer(ckpt_dir)
    it = make_train_iterator(config.data, seed=config.seed)
    step, state = ckpt.restore_newest(_target(load_state(ckpt_dir, 10)), it, warn=warnings.append)
    ckpt.close()
    return ckpt_dir, step, state, warnings


def _assert_is_step(state, workdir, step):
    expected = load_state(f"{workdir}/checkpoints", step)
    a, b = jax.tree.leaves(state), jax.tree.leaves(expected)
    assert len(a) == len(b) > 10
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_clean_checkpoints_carry_a_manifest_and_restore_the_newest(base, tmp_path):
    ckpt_dir, step, state, warnings = _restore(base, lambda d: None, tmp_path)
    assert os.path.exists(f"{ckpt_dir}/20/{MANIFEST}") and os.path.exists(
        f"{ckpt_dir}/10/{MANIFEST}"
    )
    assert step == 20 and warnings == []
    _assert_is_step(state, base[2], 20)


def test_truncated_array_file_falls_back_to_the_previous_step(base, tmp_path):
    victim = {}
    ckpt_dir, step, state, warnings = _restore(
        base,
        lambda d: (victim.setdefault("f", _largest_array_file(f"{d}/20")), _truncate(victim["f"])),
        tmp_path,
    )
    assert step == 10
    _assert_is_step(state, base[2], 10)
    assert len(warnings) == 1 and "step 20" in warnings[0] and "truncated" in warnings[0]
    assert os.path.relpath(victim["f"], f"{ckpt_dir}/20") in warnings[0]
    moved = glob.glob(f"{ckpt_dir}.corrupt/20.*")
    assert len(moved) == 1 and moved[0] in warnings[0]  # kept for inspection, not deleted
    assert not os.path.exists(f"{ckpt_dir}/20")


def test_truncated_file_without_manifest_is_caught_by_the_restore(base, tmp_path):
    """Killed between the commit and the manifest: the restore itself fails, and is survived."""

    def damage(d):
        os.remove(f"{d}/20/{MANIFEST}")
        _truncate(_largest_array_file(f"{d}/20"))

    _, step, state, warnings = _restore(base, damage, tmp_path)
    assert step == 10 and len(warnings) == 1 and "step 20" in warnings[0]
    _assert_is_step(state, base[2], 10)


def test_deleted_metadata_falls_back_to_the_previous_step(base, tmp_path):
    _, step, state, warnings = _restore(
        base, lambda d: os.remove(f"{d}/20/state/_METADATA"), tmp_path
    )
    assert step == 10
    _assert_is_step(state, base[2], 10)
    assert len(warnings) == 1 and "step 20" in warnings[0] and "state/_METADATA" in warnings[0]


def test_half_written_step_directories_are_skipped(base, tmp_path):
    """An async save killed before its commit (Orbax's tmp dir), and a step dir never committed."""

    def damage(d):
        shutil.copytree(f"{d}/20", f"{d}/30.orbax-checkpoint-tmp-1234")
        os.remove(f"{d}/30.orbax-checkpoint-tmp-1234/commit_success.txt")
        shutil.copytree(f"{d}/20", f"{d}/40")  # a final name without Orbax's commit marker
        os.remove(f"{d}/40/commit_success.txt")
        shutil.rmtree(f"{d}/40/state/d")

    ckpt_dir, step, state, warnings = _restore(base, damage, tmp_path)
    assert step == 20
    _assert_is_step(state, base[2], 20)
    assert len(warnings) == 2
    assert "30.orbax-checkpoint-tmp-1234" in warnings[0] and "unfinished save" in warnings[0]
    assert "step 40" in warnings[1] and "commit_success.txt" in warnings[1]
    assert sorted(n.split(".")[0] for n in os.listdir(f"{ckpt_dir}.corrupt")) == ["30", "40"]


@pytest.mark.slow
def test_run_resumes_from_the_intact_step_says_so_and_ends_bitwise_equal(base, tmp_path, capfd):
    tmp, config, workdir = base
    damaged = str(tmp_path / "run")
    shutil.copytree(workdir, damaged)
    os.remove(f"{damaged}/summary.json")  # as if killed right after its last save
    _truncate(_largest_array_file(f"{damaged}/checkpoints/20"))
    summary = train.loop.train_and_evaluate(config, damaged)
    err = capfd.readouterr().err
    assert summary["resumed_from"] == 10 and summary["step"] == 20
    assert "checkpoint step 20" in err and "unusable" in err
    _assert_is_step(load_state(f"{damaged}/checkpoints", 20), workdir, 20)
