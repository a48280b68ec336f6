"""Reading sweep results (`results.jsonl` or CSV) and turning usable rows into fit arrays.

A row is one finished sweep point. The fits need only `params` (N, non-embedding), `tokens` (D)
and `loss`; compute C is `flops` when the row has it, else 6 N D. Rows whose `status` is present
and not "ok" are kept for the report but never fitted.
"""

import csv
import dataclasses
import io
import json
import math
from typing import Any

import numpy as np

from common import atomic

REQUIRED = ("params", "tokens", "loss")
MIN_POINTS = 5
_INT_KEYS = ("params", "tokens", "params_total", "params_non_embedding", "n_layers", "d_model")
_FLOAT_KEYS = ("loss", "flops", "flops_per_token", "bits_per_byte", "wall_s", "budget")


class InputError(ValueError):
    """Unusable input, found before anything is written; the CLI prints it and exits 2."""


@dataclasses.dataclass(frozen=True)
class Points:
    """The usable sweep points as parallel arrays, one entry per point.

    Attributes:
      params: N, parameters used for fitting (non-embedding).
      tokens: D, training tokens seen.
      compute: C, training FLOPs (`flops`, else 6 N D).
      loss: Final held-out loss (nats/token).
      budget: The IsoFLOP budget the point was designed for; NaN for plain grid points.
      ids: Point names for tables and plots.
      designed: Whether the rows say which points are IsoFLOP points (a `budget` key on every row,
        null for grid points, as a sweep's results.jsonl has); then no profiles are guessed from C.
    """

    params: np.ndarray
    tokens: np.ndarray
    compute: np.ndarray
    loss: np.ndarray
    budget: np.ndarray
    ids: tuple[str, ...]
    designed: bool = False

    def __len__(self) -> int:
        return len(self.params)

    def take(self, index: np.ndarray) -> "Points":
        """The points at `index` (an integer array; repeats allowed, as in a bootstrap)."""
        ids = tuple(self.ids[i] for i in index)
        arrays = (self.params, self.tokens, self.compute, self.loss, self.budget)
        return Points(*(x[index] for x in arrays), ids=ids, designed=self.designed)


def is_ok(row: dict[str, Any]) -> bool:
    """Whether a row counts as a finished point (no `status`, or status "ok")."""
    return row.get("status") in (None, "ok")


def compute_of(row: dict[str, Any]) -> float:
    """Training compute C of a row: its `flops`, else 6 N D."""
    flops = row.get("flops")
    if flops is not None:
        return float(flops)
    return 6.0 * float(row["params"]) * float(row["tokens"])


COUNTS = {"params": ("non_embedding", "total"), "compute": ("flops", "6nd")}


def recount(rows: list[dict[str, Any]], params: str = "non_embedding", compute: str = "flops"):
    """`rows` with N and C counted another way (Porian et al. 2024's ablation of the
    Kaplan/Chinchilla gap): `params='total'` fits N with the embedding and the output layer
    (`params_total`); `compute='6nd'` sets C = 6 N D with that N, leaving attention (and, for
    non-embedding N, the output layer) out. The defaults return the rows unchanged.

    Raises:
      InputError: an unknown counting, or a row without `params_total` for `params='total'`.
    """
    for name, value in (("params", params), ("compute", compute)):
        if value not in COUNTS[name]:
            raise InputError(f"--{name} {value!r} is unknown; choose one of {COUNTS[name]}")
    out = []
    for i, row in enumerate(rows):
        row = dict(row)
        if params == "total" and is_ok(row):
            if row.get("params_total") is None:
                raise InputError(f"row {i + 1} has no params_total; use --params non_embedding")
            row["params"] = row["params_total"]
        if compute == "6nd" and is_ok(row):
            row["flops"] = 6.0 * float(row["params"]) * float(row["tokens"])
        out.append(row)
    return out


def _number(key: str, text: str) -> int | float | None:
    if text.strip() in ("", "null", "None"):
        return None
    value = float(text)
    return int(value) if key in _INT_KEYS and value.is_integer() else value


def _read_csv(path: str, text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [k for k in REQUIRED if k not in (reader.fieldnames or [])]
    if missing:
        raise InputError(
            f"{path}: CSV header lacks column(s) {', '.join(missing)}; the header needs at "
            "least params,tokens,loss (optional flops, budget, status)"
        )
    rows = []
    for line_no, raw in enumerate(reader, start=2):
        row: dict[str, Any] = {}
        for key, text in raw.items():
            text = text or ""
            try:
                row[key] = _number(key, text) if key in _INT_KEYS + _FLOAT_KEYS else text
            except ValueError as e:
                raise InputError(
                    f"{path}:{line_no}: column {key}={text!r} is not a number; fix the value"
                ) from e
            if key == "status" and not text:
                row[key] = None
        rows.append(row)
    return rows


def _read_jsonl(path: str, text: str) -> list[dict[str, Any]]:
    lines = text.split("\n")
    rows = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if line_no == len(lines):  # No trailing newline: a write torn by a crash; skip it.
                continue
            raise InputError(
                f"{path}:{line_no}: not valid JSON ({e.msg}); fix or drop the line"
            ) from e
        if not isinstance(row, dict):
            raise InputError(f"{path}:{line_no}: expected a JSON object per line")
        rows.append(row)
    return rows


def load_rows(path: str) -> list[dict[str, Any]]:
    """Reads sweep results: JSON Lines (one object per point) or CSV with a header row.

    Args:
      path: A `results.jsonl` (any file whose first non-blank character is `{`) or a CSV whose
        header has at least `params,tokens,loss`.

    Returns:
      One dict per row, in file order, failed rows included.

    Raises:
      InputError: The file is missing or unreadable, or a CSV lacks a required column.
    """
    if atomic.isdir(path):
        raise InputError(f"{path} is a directory; pass the results.jsonl file (or a CSV)")
    if not atomic.exists(path):
        raise InputError(f"{path}: no such file; pass the sweep's results.jsonl (or a CSV)")
    try:
        text = atomic.read_text(path)
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read it as UTF-8 text ({e}); pass results.jsonl") from e
    if text.lstrip().startswith("{"):
        return _read_jsonl(path, text)
    return _read_csv(path, text)


def _check_row(row: dict[str, Any], where: str) -> None:
    for key in REQUIRED + ("flops", "budget"):
        if key not in REQUIRED and row.get(key) is None:
            continue
        if row.get(key) is None:
            raise InputError(
                f"{where} ({row.get('id', 'no id')}) has status ok but no {key!r}; every finished "
                "point needs params, tokens and loss (mark unfinished points status=failed)"
            )
        value = row[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where}: {key}={value!r} is not a number; fix the value")
        if not (math.isfinite(value) and value > 0):
            raise InputError(
                f"{where} ({row.get('id', 'no id')}): {key}={value} must be finite and positive; "
                "mark the point status=failed if its run diverged"
            )


def to_points(rows: list[dict[str, Any]]) -> Points:
    """The usable points of `rows` (status absent or "ok") as arrays.

    Raises:
      InputError: A usable row lacks params/tokens/loss or has a non-positive value, or fewer than
        MIN_POINTS rows are usable.
    """
    usable, ids = [], []
    for i, row in enumerate(rows):
        if is_ok(row):
            _check_row(row, f"row {i + 1}")
            usable.append(row)
            ids.append(str(row.get("id", f"row {i + 1}")))
    if len(usable) < MIN_POINTS:
        raise InputError(
            f"only {len(usable)} usable point(s) (status ok with params, tokens, loss); a fit "
            f"needs at least {MIN_POINTS}: finish more sweep points first"
        )
    budget = [r.get("budget") for r in usable]
    return Points(
        params=np.array([float(r["params"]) for r in usable]),
        tokens=np.array([float(r["tokens"]) for r in usable]),
        compute=np.array([compute_of(r) for r in usable]),
        loss=np.array([float(r["loss"]) for r in usable]),
        budget=np.array([np.nan if b is None else float(b) for b in budget]),
        ids=tuple(ids),
        designed=all("budget" in r for r in usable),
    )
