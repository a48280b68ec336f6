r"""Learning-rate transfer across width: SP vs muP, loss against LR per width (TP5, Fig. 1).

  python launch/run.py --config experiments/mup_transfer.py --workdir runs/mup_transfer

A study (studies/stages.py): every (parametrization, width, lr, seed) member of the grid is one
run from scratch in `<workdir>/<member>` (a non-finite one is recorded as diverged); the
`transfer` stage writes the points, the optima and the plot to `<workdir>/transfer/`
(docs/mup.md). Under SP the best LR falls as the model widens; under muP it stays put.

Arguments (comma-separated): steps=N (per member), widths=32/64/128 (slash-separated; the first
is muP's base width), lr_exps=-12/-2 (the log2 LR range, one point per integer), seeds=N (seeds
config.seed..+N-1 per point; the curves use the mean held-out loss), runlocal (2 widths x 2 LRs
x 2 seeds x 10 steps). Measured cost is in docs/mup.md.
"""

import os

from common import atomic
from experiments.common import base_config, parse_arg
from studies import mup as analysis
from studies.stages import Stage


def get_config(arg: str = ""):
    args = parse_arg(arg, steps=300, widths="32/64/128", lr_exps="-12/-2", seeds=3, runlocal=False)
    config = base_config("tiny")
    config.kind = "study"
    m = config.model
    m.n_layers, m.n_heads, m.tie_embeddings = 2, 2, False  # muP's readout is its own matrix
    m.mup.base_width = int(args.widths.split("/")[0])
    lo, hi = (int(e) for e in args.lr_exps.split("/"))
    t = config.train
    t.steps = 10 if args.runlocal else args.steps
    t.warmup_steps, t.log_every, t.grad_accum = max(1, t.steps // 10), max(1, t.steps // 5), 1
    t.clip_norm = 0.0  # clipping rescales gradients per width differently under SP and muP
    t.eval_every = t.ckpt_every = t.steps
    t.eval_batches = 2 if args.runlocal else 16
    config.data.seq_len, config.data.batch_size = 64, 8
    config.transfer = dict(
        parametrizations=analysis.PARAMETRIZATIONS,
        widths=tuple(int(w) for w in args.widths.split("/"))[: 2 if args.runlocal else None],
        lr_exps=tuple(range(lo, hi + 1))[: 2 if args.runlocal else None],
        seeds=2 if args.runlocal else args.seeds,
    )
    if lo > hi or config.transfer.seeds < 1:
        raise ValueError(f"lr_exps={args.lr_exps} must be lo/hi with lo <= hi, seeds >= 1")
    return config


def members(config) -> list[dict]:
    """The grid's runs, width-major (a partial grid already compares SP and muP)."""
    g = config.transfer
    return [
        dict(stage=f"{p}_d{w}_lr2e{e}_s{s}", parametrization=p, width=w, lr_exp=e, seed=s)
        for w in g.widths
        for p in g.parametrizations
        for s in range(g.seeds)
        for e in g.lr_exps
    ]


def point_config(config, parametrization: str, width: int, lr_exp: int, seed: int = 0):
    """The run config of one member: width d_model (d_ff = 4x), LR 2**lr_exp, seed offset."""
    c = analysis.width_run(config, "transfer", parametrization, width)
    c.seed, c.train.lr = config.seed + seed, 2.0**lr_exp
    return c


def get_stages(config, workdir: str) -> list[Stage]:
    grid = members(config)
    keys = ("parametrization", "width", "lr_exp", "seed")
    runs = [point_config(config, *(m[k] for k in keys)) for m in grid]
    stages = [Stage(m["stage"], c, record_nonfinite=True) for m, c in zip(grid, runs, strict=True)]

    def transfer(stage_dir: str, rows: dict) -> dict:
        points = analysis.transfer_points(grid, rows)
        best = analysis.optima(points)
        atomic.write_rows(os.path.join(stage_dir, "points.jsonl"), {p["id"]: p for p in points})
        optima = {p: {str(w): e for w, e in ws.items()} for p, ws in best.items()}
        atomic.write_json(os.path.join(stage_dir, "optima.json"), optima)
        analysis.plot_transfer(points, os.path.join(stage_dir, "mup_transfer.png"))
        return {"points": points, "optima": optima}

    return stages + [Stage("transfer", action=transfer)]


def report(config, rows: dict) -> str:
    """Held-out loss per (parametrization, width) and log2 LR, and the best LR per width."""
    out = rows["transfer"]
    exps = sorted({p["lr_exp"] for p in out["points"]})
    lines = [
        "| parametrization | d_model | " + " | ".join(f"2^{e}" for e in exps) + " | best |",
        "| --- | --- |" + " --- |" * (len(exps) + 1),
    ]
    at = {(r["parametrization"], r["width"], r["lr_exp"]): r for r in out["points"]}
    for p in config.transfer.parametrizations:
        for w in config.transfer.widths:
            got = [at[p, w, e] for e in exps]
            cells = [f"{r['eval_loss']:.3f}" if r["status"] == "ok" else "diverged" for r in got]
            best = out["optima"].get(p, {}).get(str(w))
            lines.append(f"| {p} | {w} | " + " | ".join(cells) + f" | 2^{best} |")
    lines.append("")
    for p, ws in out["optima"].items():
        spread = max(ws.values()) - min(ws.values())
        best = ", ".join(f"{w}: {e}" for w, e in ws.items())
        lines.append(f"{p.upper()}: best log2 LR per width {best} (spread {spread} grid steps)")
    return "\n".join(lines)
