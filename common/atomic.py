"""The one file-I/O layer of the files runs and sweeps write, on a local disk or an object store.

Paths are strings. One with a scheme (`gs://bucket/runs/x`, also `s3://`, `az://`: the schemes
`etils.epath` serves through fsspec, so gcsfs must be installed for gs://) is remote, anything else
is local. Remote paths go through `etils.epath.Path`, the layer Orbax itself uses for checkpoint
metadata, so one fsspec filesystem serves both. Joining stays `os.path.join` (a URL joins like a
POSIX path).

Atomic writes: a reader (or a crash) never sees a half-written `config.json`, `results.jsonl`,
`fit.json`, `report.md` or plot.
- Local: a temp file in the target's directory, fsync, `os.replace` (a POSIX rename is atomic).
- Remote: the whole content in one put. Object stores have no atomic rename (a GCS "rename" is a
  copy then a delete), but one object upload is atomic: readers see the old object (or none) until
  the upload is finalised, then the whole new one. So the content is built in memory first and
  written by a single `write_bytes`; there is no temp object to leave behind.
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """True for a URL such as `gs://bucket/dir` (an object store), False for a local path."""
    return "://" in os.fspath(path)


def as_path(path: str | os.PathLike) -> epath.Path:
    """`path` as an `etils.epath.Path` (local, or remote through fsspec)."""
    return epath.Path(path)


def exists(path: str) -> bool:
    return as_path(path).exists()


def isdir(path: str) -> bool:
    """True if `path` is a directory (remote: if any object lies under the prefix)."""
    return as_path(path).is_dir()


def makedirs(path: str) -> None:
    """Creates `path` and its parents (remote: nothing to do; prefixes exist implicitly)."""
    if is_remote(path):
        as_path(path).mkdir(parents=True, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names of the entries of directory `path`."""
    if is_remote(path):
        return [p.name for p in as_path(path).iterdir()]
    return os.listdir(path)


def read_text(path: str) -> str:
    """The UTF-8 text of `path`."""
    if is_remote(path):
        return as_path(path).read_text()
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    if is_remote(path):
        return as_path(path).read_bytes()
    with open(path, "rb") as f:
        return f.read()


def move(source: str, dest: str) -> None:
    """Moves the file or directory tree `source` to `dest` (created with its parents).

    Remote: fsspec's recursive move, a server-side copy of every object and then a delete (GCS
    has no rename; epath's `rename` would also insist that `dest`'s parent "directory" exists,
    which a fresh prefix on an object store never does).
    """
    if is_remote(source):
        import fsspec

        fs, _ = fsspec.core.url_to_fs(source)
        fs.mv(source, dest, recursive=True)
        return
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    shutil.move(source, dest)


def remove(path: str) -> None:
    """Deletes the file `path`."""
    if is_remote(path):
        as_path(path).unlink()
    else:
        os.remove(path)


@contextlib.contextmanager
def _temp_path(path: str) -> Iterator[str]:
    """Yields a fresh temp path next to `path`; on success fsyncs it and renames it over `path`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # makes the rename itself durable
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
    """Writes `data` to `path` atomically: local temp file + rename, remote one put."""
    if is_remote(path):
        as_path(path).write_bytes(data)  # one upload: the object appears whole or not at all
        return
    with _temp_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented strict JSON (NaN is an error, not `NaN`) to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_figure(fig, path: str) -> None:
    """Saves a matplotlib figure as PNG to `path` atomically."""
    if is_remote(path):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
        write_bytes(path, buf.getvalue())
        return
    with _temp_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def read_rows(path: str, key: str = "id") -> dict[str, dict]:
    """A JSONL results file (local or remote) as {row[key]: row}; the last line of a key wins;
    {} when the file does not exist."""
    rows = {}
    if exists(path):
        for line in read_text(path).splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row[key]] = row
    return rows


def write_rows(path: str, rows: dict[str, dict]) -> None:
    """Rewrites a JSONL results file atomically, one row per line in `rows`' order."""
    write_text(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows.values()))
