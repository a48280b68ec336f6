"""Metric writers: `<workdir>/metrics.jsonl` (what `scaling/` reads) plus TensorBoard under `tb/`.

Every JSON line is `{"step": int, "<name>": float | null, ...}`. Non-finite values (NaN, +-Inf) are
written as `null`, because strict JSON has no spelling for them and other readers (jq, pandas)
reject Python's `NaN` extension; TensorBoard still receives the raw value.

A remote workdir (`gs://...`, common/atomic.py) holds the same files. An object cannot be appended
to (gcsfs silently turns append into overwrite), so there the lines are kept in memory and the whole
metrics.jsonl is uploaded in one put at most every `upload_every_s` seconds and on every `flush`
(the loop flushes before each checkpoint, so a resumed run finds every row up to its checkpoint),
`truncate_after` and `close`. TensorBoard event files are uploaded the same way, whole, whenever
tensorboardX flushes them.
"""

import io
import json
import math
import os
import sys
import time
from typing import Any

from common import atomic

# tensorboardX imports torch when it is installed, only to accept torch tensors (this module hands
# it floats): blocking that import saves every run about 1.5 s of start-up on this machine.
_TORCH_BLOCKED = "torch" not in sys.modules
if _TORCH_BLOCKED:
    sys.modules["torch"] = None  # an import of a None entry raises ImportError
try:
    from tensorboardX import SummaryWriter, record_writer
finally:
    if _TORCH_BLOCKED:
        del sys.modules["torch"]

_CHUNK = 1 << 16


def _to_json_value(value: Any) -> float | None:
    value = float(value)  # Accepts Python, numpy and (fetched) JAX scalars.
    return value if math.isfinite(value) else None


def _drop_partial_last_line(path: str) -> None:
    """Truncates `path` after its last newline; a SIGKILL mid-write can leave a torn line."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        # Scan backwards in chunks so reopening a long log does not read the whole file.
        while pos > 0:
            start = max(0, pos - _CHUNK)
            f.seek(start)
            newline = f.read(pos - start).rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                break
            pos = start
        else:
            keep = 0
        if keep != end:
            f.truncate(keep)
            os.fsync(f.fileno())


def read_metrics(path: str) -> list[dict[str, Any]]:
    """Reads a metrics.jsonl file.

    Args:
      path: Path of the file (local or remote).

    Returns:
      One dict per complete line, in file order; `null` values come back as None. A trailing line
      without its newline (a write in progress or torn by a crash) is ignored.
    """
    lines = atomic.read_text(path).split("\n")
    # The element after the last '\n' is '' for a well-formed file, else a partial line.
    return [json.loads(line) for line in lines[:-1] if line.strip()]


class _ObjectRecordWriter:
    """A tensorboardX record writer for object stores: buffers the file, uploads it whole."""

    def __init__(self, path: str):
        self.path = path
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        atomic.write_bytes(self.path, self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _ObjectRecordWriterFactory:
    def open(self, path: str) -> _ObjectRecordWriter:
        return _ObjectRecordWriter(path)

    def directory_check(self, path: str) -> None:
        atomic.makedirs(path)


def _use_object_store_for_tensorboard(url: str) -> None:
    """Routes tensorboardX's files under `url`'s scheme through common/atomic.py (epath): its own
    gs:// writer would need google-cloud-storage, a second client next to the one Orbax uses."""
    scheme = url.split("://", 1)[0]
    record_writer.register_writer_factory(scheme, _ObjectRecordWriterFactory())


class MetricWriter:
    """Appends metrics to `<workdir>/metrics.jsonl` and TensorBoard; a no-op when not enabled.

    Local workdir: each JSON line goes out in one `write` call and is fsync-ed, so a crash loses at
    most the line being written, and that torn line is removed the next time the file is opened.
    Remote workdir: see the module docstring (whole-object uploads).
    """

    def __init__(self, workdir: str, enabled: bool = True, *, upload_every_s: float = 30.0):
        """Opens (creating if needed) the metric files.

        Args:
          workdir: Run directory, local or remote (`gs://...`).
          enabled: False on non-zero processes: nothing is created or written.
          upload_every_s: remote workdir only: the longest time between two uploads of
            metrics.jsonl while lines are being written.
        """
        self.enabled = enabled
        self._remote = atomic.is_remote(workdir)
        self._dir = workdir if self._remote else os.path.abspath(workdir)
        self.path = os.path.join(self._dir, "metrics.jsonl")
        self._tb_dir = os.path.join(workdir, "tb")
        self._fd = -1
        # Remote: every complete line of the file, the time of the last upload, unsent lines.
        self._lines: list[bytes] = []
        self._uploaded = time.monotonic()
        self._dirty = False
        self._upload_every_s = upload_every_s
        # Created on first use (tensorboardX opens a file at once), and named per process and
        # writer: tensorboardX names files by the second and opens them "wb", so two writers in
        # one second on one host would clobber each other.
        self._tb: SummaryWriter | None = None
        self._tb_count = 0
        self._purge_step: int | None = None
        if not enabled:
            return
        if self._remote:
            _use_object_store_for_tensorboard(workdir)
            if atomic.exists(self.path):
                text = atomic.read_bytes(self.path)
                self._lines = text[: text.rfind(b"\n") + 1].splitlines(keepends=True)
            return
        os.makedirs(workdir, exist_ok=True)
        if os.path.exists(self.path):
            _drop_partial_last_line(self.path)
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _upload(self) -> None:
        """Remote: writes the whole metrics.jsonl in one put (atomic on an object store)."""
        atomic.write_bytes(self.path, b"".join(self._lines))
        self._uploaded = time.monotonic()
        self._dirty = False

    def _tb_writer(self) -> SummaryWriter:
        if self._tb is None:
            self._tb_count += 1
            suffix = f".{os.getpid()}.{self._tb_count}"
            self._tb = SummaryWriter(
                self._tb_dir, purge_step=self._purge_step, filename_suffix=suffix
            )
        return self._tb

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Appends one line `{"step": step, **metrics}` and logs each scalar to TensorBoard.

        Args:
          step: Training step.
          metrics: Scalar metrics by name, e.g. `train/loss`; values convertible with `float()`.
        """
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _to_json_value(v) for k, v in metrics.items()}}
        data = (json.dumps(record, allow_nan=False) + "\n").encode("utf-8")
        if self._remote:
            self._lines.append(data)
            self._dirty = True
            if time.monotonic() - self._uploaded >= self._upload_every_s:
                self._upload()
        else:
            written = os.write(self._fd, data)
            while written < len(data):  # Short writes are rare on regular files, but legal.
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        tb = self._tb_writer()
        for name, value in metrics.items():
            tb.add_scalar(name, float(value), int(step))

    def truncate_after(self, step: int) -> None:
        """Keeps only lines with `step <= step`, so a resumed run never writes a step twice.

        The JSON file is rewritten atomically (common/atomic.py).
        Event files cannot be edited, so the TensorBoard writer is reopened with
        `purge_step=step + 1`, which makes TensorBoard hide the older events past `step`.

        Args:
          step: Last step to keep, normally the step of the restored checkpoint.
        """
        if not self.enabled:
            return
        if self._remote:
            self._lines = [line for line in self._lines if json.loads(line)["step"] <= step]
            self._upload()
        else:
            self._truncate_local(step)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._purge_step = int(step) + 1

    def _truncate_local(self, step: int) -> None:
        os.close(self._fd)
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        atomic.write_text(self.path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
        self._open()

    def flush(self) -> None:
        """Flushes TensorBoard events and, for a remote workdir, uploads metrics.jsonl.

        A local metrics.jsonl is always flushed (fsync per line).
        """
        if not self.enabled:
            return
        if self._remote and self._dirty:
            self._upload()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes both files; further calls are no-ops."""
        if not self.enabled:
            return
        if self._remote:
            if self._dirty:
                self._upload()
        else:
            os.close(self._fd)
        if self._tb is not None:
            self._tb.close()
        self.enabled = False

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
