"""Atomic file writes: temp file in the target's directory, fsync, `os.replace`.

A reader (or a crash) never sees a half-written `fit.json`, `report.md` or plot.
"""

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any


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
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    """Writes `text` (UTF-8) to `path` atomically."""
    with _temp_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented strict JSON (NaN is an error, not `NaN`) to `path` atomically."""
    write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def save_figure(fig, path: str) -> None:
    """Saves a matplotlib figure as PNG to `path` atomically."""
    with _temp_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
