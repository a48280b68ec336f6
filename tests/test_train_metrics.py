"""Tests for train/metrics.py (JSONL + TensorBoard writer) and train/progress.py."""

import glob
import json
import math
import os
import struct

import numpy as np
import pytest

from train import metrics as metrics_lib
from train import progress as progress_lib


def _read_tb_scalars(tb_dir):
    """Parses TFRecord-framed Event protos: u64 length, u32 crc, payload, u32 crc."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = []
    for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return scalars


def test_write_read_round_trip(tmp_path):
    with metrics_lib.MetricWriter(str(tmp_path)) as writer:
        writer.write(0, {"train/loss": np.float32(2.5), "perf/mfu": 0.25})
        writer.write(10, {"train/loss": 1.5, "eval/loss": float("nan"), "x": math.inf})
    records = metrics_lib.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert records == [
        {"step": 0, "train/loss": 2.5, "perf/mfu": 0.25},
        {"step": 10, "train/loss": 1.5, "eval/loss": None, "x": None},
    ]
    # Strict JSON: no bare NaN/Infinity tokens.
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text and text.endswith("\n")


def test_tensorboard_scalars(tmp_path):
    with metrics_lib.MetricWriter(str(tmp_path)) as writer:
        writer.write(1, {"train/loss": 3.0})
        writer.write(2, {"train/loss": 2.0, "perf/tokens_per_s": 100.0})
    assert _read_tb_scalars(str(tmp_path / "tb")) == [
        (1, "train/loss", 3.0),
        (2, "train/loss", 2.0),
        (2, "perf/tokens_per_s", 100.0),
    ]


def test_truncate_after(tmp_path):
    writer = metrics_lib.MetricWriter(str(tmp_path))
    for step in range(1, 6):
        writer.write(step, {"train/loss": float(step)})
    writer.truncate_after(3)
    writer.write(4, {"train/loss": 40.0})
    writer.close()
    records = metrics_lib.read_metrics(writer.path)
    assert [(r["step"], r["train/loss"]) for r in records] == [(1, 1), (2, 2), (3, 3), (4, 40)]
    assert not glob.glob(str(tmp_path / ".metrics.*"))  # No temp file left behind.
    # Both event files survive; the second asks TensorBoard to purge steps >= 4 of the first.
    assert len(glob.glob(str(tmp_path / "tb" / "events.*"))) == 2
    assert (4, "train/loss", 40.0) in _read_tb_scalars(str(tmp_path / "tb"))


def test_partial_trailing_line_dropped_on_reopen(tmp_path):
    with metrics_lib.MetricWriter(str(tmp_path)) as writer:
        writer.write(1, {"a": 1.0})
        writer.write(2, {"a": 2.0})
    with open(writer.path, "ab") as f:
        f.write(b'{"step": 3, "a": 3.')  # As if SIGKILL-ed mid-write.
    assert [r["step"] for r in metrics_lib.read_metrics(writer.path)] == [1, 2]
    with metrics_lib.MetricWriter(str(tmp_path)) as writer:
        writer.write(3, {"a": 3.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


def test_file_that_is_all_partial_line(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1')
    metrics_lib.MetricWriter(str(tmp_path)).close()
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""


def test_disabled_writer_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    writer = metrics_lib.MetricWriter(str(workdir), enabled=False)
    writer.write(1, {"a": 1.0})
    writer.truncate_after(0)
    writer.flush()
    writer.close()
    assert not workdir.exists()


def _fake_clock(monkeypatch, start=100.0):
    now = [start]
    monkeypatch.setattr(progress_lib.time, "monotonic", lambda: now[0])
    return now


def test_progress_plain_lines_with_eta(capsys, monkeypatch):
    now = _fake_clock(monkeypatch)
    # capsys's stdout is not a TTY, so this picks plain lines by itself.
    progress = progress_lib.Progress(100, start_step=0, min_interval_s=0.0)
    for step in range(10, 101, 10):
        now[0] += 1.0  # 10 steps per second.
        progress.update(step, {"train/loss": 2.0, "perf/tokens_per_s": 2e6, "perf/mfu": 0.5})
    progress.write("eval done")
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 11 and lines[-1] == "eval done"
    assert lines[0].startswith("train step 10/100 loss=2.0000 tok/s=2.00M mfu=50.0%")
    assert lines[0].endswith("eta=?")  # No rate yet after one update.
    # Rate 10 steps/s from the first update: 50 steps left at step 50 -> 5 s.
    assert "step 50/100" in lines[4] and "elapsed=00:05" in lines[4]
    assert lines[4].endswith("eta=00:05")


def test_progress_rate_limits_lines(capsys, monkeypatch):
    now = _fake_clock(monkeypatch)
    progress = progress_lib.Progress(50, start_step=20, tty=False, log_every=2)
    for step in range(21, 51):
        now[0] += 3.0
        progress.update(step, {})
    lines = capsys.readouterr().out.splitlines()
    # First update, then every 12 s (>= 10 s and >= 2 updates), and the final step.
    steps = [int(line.split()[2].split("/")[0]) for line in lines]
    assert steps == [21, 25, 29, 33, 37, 41, 45, 49, 50]


@pytest.mark.parametrize("tty", [True, False])
def test_progress_disabled_prints_nothing(capsys, tty):
    progress = progress_lib.Progress(10, enabled=False, tty=tty)
    progress.update(5, {"train/loss": 1.0})
    progress.write("hello")
    progress.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_progress_tty_bar(capsys):
    progress = progress_lib.Progress(10, start_step=2, tty=True)
    progress.update(5, {"train/loss": 1.25, "perf/mfu": 0.1})
    progress.write("checkpoint saved")
    progress.close()
    out = capsys.readouterr().out
    assert "checkpoint saved" in out and "10/10" not in out and "/10" in out
