r"""A short learning-rate scan per size of the scaling ladder: the peak lr each size wants.

  python launch/run.py --config experiments/lr_scan.py --workdir runs/lr_scan
  python launch/run.py --config experiments/lr_scan.py:preset=smoke,multiples=0.5/2 --workdir ...

Each (size, multiple) stage is one run of experiments/scaling.py's point of that size at the
preset's shortest token budget, with the sweep's recipe (schedule, warmup, cooldown) and peak lr =
multiple x the sweep's width rule (lr x (128 / d_model)^0.5). A multiple whose run stops on a
non-finite loss is recorded as diverged. report.md has the eval loss of every run, the best lr per
size (the vertex of a parabola in log lr through the best multiple and its two neighbours, or the
best multiple itself at the edge of the grid) and the line that trains the sweep with them:
`experiments/scaling.py:lrs=a/b/c/d`.

Arguments: preset (experiments/scaling.py's), multiples ('/'-separated), schedule.
"""

import numpy as np

from experiments import scaling
from experiments.common import parse_arg
from studies.stages import Stage


def get_config(arg: str = ""):
    args = parse_arg(arg, preset="cpu", multiples="0.5/1/2/4", schedule="wsd")
    multiples = tuple(float(m) for m in args.multiples.split("/"))
    if not multiples or min(multiples) <= 0:
        raise ValueError(f"multiples={args.multiples!r}: give positive lr multiples, e.g. 0.5/1/2")
    config = scaling.get_config(f"preset={args.preset},schedule={args.schedule},bootstrap=0")
    config.kind = "study"
    config.sweep.multiples = multiples
    return config


def _points(config) -> list[tuple[dict, float]]:
    """(point, multiple) of every stage: each size at the shortest budget, each lr multiple."""
    tokens_per_step = config.data.batch_size * config.data.seq_len
    steps = max(round(min(config.sweep.tokens) / tokens_per_step), scaling._min_steps(config))
    out = []
    for k in config.sweep.ladder:
        base = scaling.make_point(config, k, steps)
        for m in config.sweep.multiples:
            out.append((base | {"lr": base["lr"] * m, "id": f"{base['id']}_lr{m:g}x"}, m))
    return out


def get_stages(config, workdir: str) -> list[Stage]:
    return [
        Stage(p["id"], config=scaling.point_config(config, p), record_nonfinite=True)
        for p, _ in _points(config)
    ]


def best_lr(lrs: np.ndarray, losses: np.ndarray) -> float:
    """The lr of the lowest loss; inside the grid, the vertex of the parabola in log lr through
    it and its neighbours (kept within them). NaN losses (diverged runs) never win."""
    losses = np.where(np.isfinite(losses), losses, np.inf)
    i = int(np.argmin(losses))
    if 0 < i < len(lrs) - 1 and np.all(np.isfinite(losses[i - 1 : i + 2])):
        x = np.log(lrs[i - 1 : i + 2])
        a, b, _ = np.polyfit(x, losses[i - 1 : i + 2], 2)
        if a > 0:
            return float(np.exp(np.clip(-b / (2 * a), x[0], x[2])))
    return float(lrs[i])


def tuned_lrs(config, rows: dict) -> dict[str, tuple[float, float]]:
    """{size: (best lr, its loss at the best scanned multiple)} from the stage rows."""
    by_size: dict[str, list] = {}
    for p, _ in _points(config):
        row = rows.get(p["id"], {})
        loss = row["eval/loss"] if row.get("status") == "ok" else np.nan
        by_size.setdefault(p["id"].split("@")[0], []).append((p["lr"], loss))
    out = {}
    for size, pairs in by_size.items():
        lrs, losses = (np.array(v, float) for v in zip(*pairs, strict=True))
        out[size] = (best_lr(lrs, losses), float(np.nanmin(losses)))
    return out


def report(config, rows: dict) -> str:
    multiples = config.sweep.multiples
    lines = [
        "| size | " + " | ".join(f"{m:g}x" for m in multiples) + " | best lr |",
        "| --- |" + " --- |" * (len(multiples) + 1),
    ]
    best = tuned_lrs(config, rows)
    points = _points(config)
    for size, (lr, _) in best.items():
        cells = []
        for p, _ in points:
            if p["id"].startswith(size + "@"):
                row = rows[p["id"]]
                ok = row.get("status") == "ok"
                cells.append(f"{row['eval/loss']:.4f} ({p['lr']:.2g})" if ok else "diverged")
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {lr:.3g} |")
    arg = "/".join(f"{lr:.3g}" for lr, _ in best.values())
    lines += [
        "",
        f"Eval loss (nats/token) after {points[0][0]['steps']} steps (peak lr in brackets); "
        f"multiples of the width rule lr x (128 / d_model)^0.5 with lr {config.sweep.lr}.",
        "",
        "The sweep with these learning rates:",
        "",
        f"    python launch/run.py --config experiments/scaling.py:lrs={arg} --workdir ...",
    ]
    return "\n".join(lines)
