"""Fit scaling laws to a sweep's results and write fit.json, plots and report.md.

  python -m scaling.fit RESULTS [--out DIR] [--bootstrap N] [--seed S] [--ci LOW HIGH]
                                [--budgets C [C ...]] [--params non_embedding|total]
                                [--compute flops|6nd]

RESULTS is a sweep's `results.jsonl` (or a CSV with at least params,tokens,loss). The fit is printed
as one JSON object on stdout; with --out it is also written to DIR/fit.json with the PNG plots and
report.md (each file atomically). --params and --compute count N and C another way
(`scaling.rows.recount`: total parameters, C = 6 N D) to measure what the counting does to the
fit. Bad input prints one line on stderr and exits 2, writing nothing.
The sweep runner calls `analyze` directly.
"""

import argparse
import json
import math
import os
import sys
from typing import Any

import numpy as np

from common import atomic
from scaling import analysis, blas, plots, report
from scaling.bootstrap import LEVELS
from scaling.rows import COUNTS, InputError, is_ok, load_rows, recount, to_points

__all__ = ["InputError", "analyze", "load_rows", "main"]


def _json_safe(obj: Any) -> Any:
    """Plain Python containers and numbers; NaN and infinities become None (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _check_options(out_dir, n_bootstrap: int, levels: tuple[float, float], budgets) -> None:
    if out_dir is not None and atomic.exists(out_dir) and not atomic.isdir(out_dir):
        raise InputError(f"--out {out_dir} is a file; pass a directory (it is created if needed)")
    if n_bootstrap < 0:
        raise InputError(f"--bootstrap {n_bootstrap} is negative; pass 0 (no intervals) or more")
    lo, hi = levels
    if not 0 <= lo < hi <= 100:
        raise InputError(f"--ci {lo} {hi}: need 0 <= LOW < HIGH <= 100 (percentiles)")
    if budgets is not None and not all(b > 0 and math.isfinite(b) for b in budgets):
        raise InputError("--budgets must be positive FLOP counts such as 1e18")


def analyze(
    rows: list[dict],
    out_dir: str | None,
    *,
    n_bootstrap: int = 200,
    seed: int = 0,
    meta: dict | None = None,
    levels: tuple[float, float] = LEVELS,
    budgets: list[float] | None = None,
    verification: dict | None = None,
) -> dict:
    """Fits every law to the sweep's rows; writes fit.json, the plots and report.md if asked.

    Args:
      rows: Sweep results, one dict per point (see `scaling.rows`); failed rows are reported and
        not fitted.
      out_dir: Directory to write into (created if needed; local or remote, `gs://...`), or
        None to write nothing.
      n_bootstrap: Bootstrap resamples for the intervals (0: no intervals).
      seed: Seed of the resampling.
      meta: Free-form sweep information rendered in the report (title, command, machine,
        schedule, grid, n_parameter_definition, ...).
      levels: Percentiles of the bootstrap intervals.
      budgets: Compute budgets (FLOPs) for the allocation table; default one per decade from the
        sweep's smallest C to 100x its largest.
      verification: A scored prediction beyond the sweep (scaling/verify.py `score`), kept in
        fit.json and reported.

    Returns:
      JSON-ready dict: `E`, `A`, `B`, `alpha`, `beta` (approach 3), `a`, `b` and `a_b_source`
      ("approach2" when 2+ IsoFLOP budgets are usable, else approach 3's implied values),
      `n_points`, `n_failed`, `ci` (key -> [low, high] or None, also for Kaplan's alpha_N, N_c,
      alpha_D, D_c), blocks `approach3`, `approach2`, `kaplan`, `allocation`, `extrapolation`,
      `bootstrap`, `sweep`, and `plots` (file -> written/skipped) when `out_dir` is given.

    Raises:
      InputError: Missing columns, bad values or fewer than 5 usable points; nothing is written.
    """
    _check_options(out_dir, n_bootstrap, levels, budgets)
    points = to_points(rows)
    with blas.single_threaded():
        result, fit = analysis.analyze_points(
            points,
            n_bootstrap=n_bootstrap,
            seed=seed,
            levels=tuple(levels),
            budgets=None if budgets is None else np.asarray(budgets, dtype=float),
        )
    result["n_failed"] = sum(not is_ok(r) for r in rows)
    if verification is not None:
        result["verification"] = verification
    if out_dir is not None:
        atomic.makedirs(out_dir)
        result["plots"] = plots.write_plots(out_dir, points, fit, result["approach2"])
    result = _json_safe(result)
    if out_dir is not None:
        text = report.render(rows, result, meta, result["plots"])
        atomic.write_text(os.path.join(out_dir, "report.md"), text)
        atomic.write_json(os.path.join(out_dir, "fit.json"), result)
    return result


def main(argv: list[str] | None = None) -> int:
    """The CLI; returns the exit code (0, or 2 for bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m scaling.fit", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "results", help="results.jsonl of a sweep, or a CSV with params,tokens,loss"
    )
    parser.add_argument("--out", help="directory for fit.json, the PNG plots and report.md")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (200)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    parser.add_argument(
        "--ci", type=float, nargs=2, default=LEVELS, metavar=("LOW", "HIGH"), help="percentiles"
    )
    parser.add_argument("--budgets", type=float, nargs="+", help="FLOP budgets for the allocation")
    parser.add_argument(
        "--params", default="non_embedding", help=f"N counted as {' or '.join(COUNTS['params'])}"
    )
    parser.add_argument(
        "--compute", default="flops", help=f"C counted as {' or '.join(COUNTS['compute'])}"
    )
    args = parser.parse_args(argv)
    try:
        rows = recount(load_rows(args.results), args.params, args.compute)
        result = analyze(
            rows,
            args.out,
            n_bootstrap=args.bootstrap,
            seed=args.seed,
            levels=tuple(args.ci),
            budgets=args.budgets,
        )
    except InputError as e:
        print(f"scaling.fit: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
