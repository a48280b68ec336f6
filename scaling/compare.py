"""Sweeps side by side: what each recipe change does to the fitted laws and their extrapolation.

  python -m scaling.compare baseline=runs/scaling/results.jsonl \
      "cooldown 40%=runs/scaling_decay40/results.jsonl" \
      "N total=runs/scaling/results.jsonl@total" "C = 6ND=runs/scaling/results.jsonl@,6nd"

Each argument is LABEL=RESULTS[@PARAMS[,COMPUTE]]: a sweep's results.jsonl and how to count N and
C (`scaling.rows.recount`: non_embedding|total, flops|6nd). Every sweep is fitted as
`python -m scaling.fit` does (no bootstrap) and one markdown row printed per sweep: the
extrapolation check's errors on the held-out top-compute points for approach 3's additive form
and Kaplan's joint form, the form cross-validation selects, and approach 3's alpha, beta and
a = beta / (alpha + beta). Bad input prints one line and exits 2.
"""

import argparse
import sys

from scaling import fit as fit_cli
from scaling.rows import InputError, load_rows, recount

HEADER = [
    "sweep",
    "additive: errors on the held-out points",
    "additive max",
    "Kaplan joint max",
    "selected",
    "alpha",
    "beta",
    "a",
]


def parse(spec: str) -> tuple[str, str, str, str]:
    """(label, results path, params counting, compute counting) of LABEL=PATH[@PARAMS[,COMPUTE]]."""
    label, sep, rest = spec.rpartition("=")
    if not sep or not label or not rest:
        raise InputError(f"{spec!r}: write LABEL=RESULTS[@PARAMS[,COMPUTE]]")
    path, _, counting = rest.partition("@")
    params, _, compute = counting.partition(",")
    return label, path, params or "non_embedding", compute or "flops"


def row(label: str, rows: list[dict]) -> list[str]:
    """The markdown cells of one sweep (see the module docstring)."""
    r = fit_cli.analyze(rows, None, n_bootstrap=0)
    e = r["extrapolation"]
    if "approach3" not in e:
        raise InputError(f"{label}: no extrapolation check ({e.get('reason')})")
    errors = ", ".join(f"{p['rel_err']:+.1%}" for p in e["approach3"]["points"])
    return [
        label,
        errors,
        f"{e['approach3']['max_abs_rel_err']:.1%}",
        f"{e['kaplan_joint']['max_abs_rel_err']:.1%}",
        e["selected"],
        f"{r['alpha']:.3f}",
        f"{r['beta']:.3f}",
        f"{r['beta'] / (r['alpha'] + r['beta']):.3f}",
    ]


def table(specs: list[str]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + " --- |" * len(HEADER)]
    for spec in specs:
        label, path, params, compute = parse(spec)
        cells = row(label, recount(load_rows(path), params, compute))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scaling.compare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("sweeps", nargs="+", help="LABEL=RESULTS[@PARAMS[,COMPUTE]]")
    args = parser.parse_args(argv)
    try:
        print(table(args.sweeps))
    except InputError as e:
        print(f"scaling.compare: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
