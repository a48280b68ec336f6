"""A gs:// workdir, served from memory by `tests.helpers.fake_gcs` through etils.epath and fsspec
(the path a real gs:// path takes with gcsfs installed): metrics.jsonl and its truncation,
TensorBoard events, the config.json claim, a sweep's results, fit, report and plots, and the
checkpoint directory's own bookkeeping (manifests, unfinished saves, quarantine). Orbax's array
files go through TensorStore's GCS driver, which this fake does not serve (see the last test)."""

import json
import os
import struct
from unittest import mock

import pytest

from common import atomic
from tests.helpers import fake_gcs, small_config

RUN = "gs://bucket/runs/r"


@pytest.fixture
def gcs():
    with fake_gcs() as fs:
        yield fs


def _objects(fs, prefix: str) -> list[str]:
    prefix = prefix.removeprefix("gs://")
    return sorted(k.removeprefix(prefix + "/") for k in fs.store if k.startswith(prefix + "/"))


def test_atomic_writes_are_one_put_of_the_final_object(gcs):
    atomic.write_json(f"{RUN}/fit.json", {"alpha": 0.3})
    atomic.write_text(f"{RUN}/report.md", "# report\n")
    assert gcs.puts == ["bucket/runs/r/fit.json", "bucket/runs/r/report.md"]  # no temp objects
    assert json.loads(atomic.read_text(f"{RUN}/fit.json")) == {"alpha": 0.3}
    assert atomic.isdir(RUN) and sorted(atomic.listdir(RUN)) == ["fit.json", "report.md"]
    atomic.move(RUN, "gs://bucket/old/r")
    assert (
        not atomic.exists(RUN) and atomic.read_text("gs://bucket/old/r/report.md") == "# report\n"
    )


def _tb_scalars(fs, prefix):
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for name in _objects(fs, prefix):
        data = fs.store[f"{prefix.removeprefix('gs://')}/{name}"].getvalue()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return out


def test_metrics_upload_whole_and_truncate(gcs):
    from train.metrics import MetricWriter, read_metrics

    path = f"{RUN}/metrics.jsonl"
    writer = MetricWriter(RUN, upload_every_s=3600)
    for step in range(1, 6):
        writer.write(step, {"train/loss": float(step), "x": float("nan")})
    assert not atomic.exists(path)  # buffered: nothing uploaded within upload_every_s
    writer.flush()
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]
    writer.truncate_after(3)  # a resumed run: one put of the kept rows
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    writer.write(4, {"train/loss": 40.0})
    writer.close()
    assert read_metrics(path) == [
        *({"step": s, "train/loss": float(s), "x": None} for s in (1, 2, 3)),
        {"step": 4, "train/loss": 40.0},
    ]
    # A second writer (the resumed process) keeps what is there: appending is an upload of all.
    with MetricWriter(RUN, upload_every_s=0) as again:
        again.write(5, {"train/loss": 50.0})
        assert [r["step"] for r in read_metrics(path)] == [1, 2, 3, 4, 5]  # uploaded at once
    assert set(gcs.puts) <= {"bucket/runs/r/metrics.jsonl"} | {
        f"bucket/runs/r/tb/{n}" for n in _objects(gcs, f"{RUN}/tb")
    }
    scalars = _tb_scalars(gcs, f"{RUN}/tb")
    assert (4, "train/loss", 40.0) in scalars and (5, "train/loss", 50.0) in scalars
    # A disabled writer (process > 0) touches nothing.
    MetricWriter("gs://bucket/other", enabled=False).write(1, {"a": 1.0})
    assert not _objects(gcs, "gs://bucket/other")


def test_claim_workdir_writes_config_and_refuses_another(gcs, tmp_path):
    from train.loop import claim_workdir
    from train.validate import ConfigError, check_workdir

    config = small_config(tmp_path)
    claim_workdir(RUN, config)
    assert json.loads(atomic.read_text(f"{RUN}/config.json")) == json.loads(
        json.dumps(config.to_dict())
    )
    claim_workdir(RUN, config)  # the same config again: a resume
    assert _objects(gcs, RUN) == ["config.json"]  # the writability probe left nothing
    other = small_config(tmp_path)
    other.train.steps = 99
    with pytest.raises(
        ConfigError, match=r"--workdir=gs://bucket/runs/r holds a run .*train\.steps"
    ):
        check_workdir(RUN, other)
    with pytest.raises(ConfigError, match="--workdir=gs://bucket/runs/r/config.json is a file"):
        check_workdir(f"{RUN}/config.json", config)
    with pytest.raises(ConfigError, match="cannot be opened"):
        check_workdir("ftp://host/runs/r", config)
    with (
        mock.patch.object(atomic, "write_bytes", side_effect=PermissionError("403 Forbidden")),
        pytest.raises(ConfigError, match="gs://bucket/new is not writable .*403 Forbidden"),
    ):
        check_workdir("gs://bucket/new", config)


def test_sweep_results_fit_report_and_plots(gcs):
    import numpy as np

    from common.atomic import read_rows, write_rows
    from scaling import synthetic
    from scaling.fit import analyze, load_rows

    sweep = "gs://bucket/sweeps/s"
    rows = synthetic.grid_rows(
        synthetic.CHINCHILLA, np.geomspace(1e6, 1e8, 4), np.geomspace(1e8, 1e10, 4), seed=0
    )
    results = os.path.join(sweep, "results.jsonl")
    write_rows(results, {r["id"]: r for r in rows})
    assert read_rows(results) == {r["id"]: r for r in rows}
    assert load_rows(results) == rows
    fit = analyze(rows, sweep, n_bootstrap=0)
    names = _objects(gcs, sweep)
    assert {"fit.json", "report.md", "results.jsonl", "loss_vs_params.png"} <= set(names)
    assert json.loads(atomic.read_text(f"{sweep}/fit.json"))["alpha"] == pytest.approx(fit["alpha"])
    assert atomic.read_bytes(f"{sweep}/loss_vs_params.png").startswith(b"\x89PNG")
    assert all(p.startswith("bucket/sweeps/s/") and "/." not in p for p in gcs.puts)


@pytest.fixture
def remote_checkpoints(gcs):
    """Step directories laid out as Orbax leaves them on GCS: 10 and 20 committed, 30 not (a
    kill during its save: on GCS Orbax writes in place and commits with commit_success.txt)."""
    from orbax.checkpoint._src.path import gcs_utils

    directory = f"{RUN}/checkpoints"
    for step, committed in ((10, True), (20, True), (30, False)):
        atomic.write_text(f"{directory}/{step}/_CHECKPOINT_METADATA", "{}")
        atomic.write_text(f"{directory}/{step}/state/ocdbt.process_0/d/0", "x" * step)
        if committed:
            atomic.write_text(f"{directory}/{step}/commit_success.txt", "ok")
    # Orbax asks the GCS API (google-cloud-storage) whether the bucket is hierarchical: no.
    with mock.patch.object(gcs_utils, "is_hierarchical_namespace_enabled", lambda _: False):
        yield gcs, directory


def test_checkpoint_bookkeeping_on_an_object_store(remote_checkpoints):
    from train.checkpoint import MANIFEST, Checkpointer, check_step_dir, latest_step

    gcs, directory = remote_checkpoints
    ckpt = Checkpointer(directory)
    assert ckpt.manager.all_steps() == [10, 20] and latest_step(directory) == 20
    assert ckpt.unfinished() == ["30"]
    ckpt._write_manifests()  # what each save does for the steps committed before it
    manifest = json.loads(atomic.read_text(f"{directory}/20/{MANIFEST}"))
    assert manifest["state/ocdbt.process_0/d/0"] == 20 and "commit_success.txt" in manifest
    assert check_step_dir(f"{directory}/20") is None
    atomic.write_text(f"{directory}/20/state/ocdbt.process_0/d/0", "x")  # a truncated shard
    assert check_step_dir(f"{directory}/20") == (
        "state/ocdbt.process_0/d/0 has 1 bytes, 20 were written (truncated?)"
    )
    assert check_step_dir(f"{directory}/30") == "no commit_success.txt (an unfinished save)"
    dest = ckpt.quarantine("30")
    assert dest.startswith(f"{directory}.corrupt/30.") and ckpt.unfinished() == []
    assert atomic.exists(f"{dest}/state/ocdbt.process_0/d/0")
    ckpt.close()


def test_orbax_arrays_use_tensorstore_gcs_driver():
    """Why the fake stops at Orbax's arrays: they are written by TensorStore's own GCS client
    (kvstore driver 'gcs'), not through fsspec, so only a GCS server (real or emulated) holds
    them. This pins the spec Orbax builds for a gs:// checkpoint."""
    from orbax.checkpoint._src.serialization import tensorstore_utils

    spec = tensorstore_utils.build_kvstore_tspec(f"{RUN}/checkpoints/10/state", name="params")
    assert spec["base"]["driver"] == "gcs" and spec["base"]["bucket"] == "bucket"
