r"""Learning-rate transfer across width: SP vs muP, loss against LR per width (TP5, Fig. 1).

  python launch/mup_transfer.py --config experiments/mup_transfer.py --workdir runs/mup_transfer

trains every (parametrization, width, lr) point of the grid below from scratch on the embedded
stdlib corpus (byte tokenizer), writes `results.jsonl` (one line per point) and
`mup_transfer.png` (held-out loss against LR, one curve per width, SP and muP side by side) in the
workdir, and prints the best LR per width. Rerunning skips finished points. Under SP the best
LR falls as the model widens; under muP (base width = the smallest) it stays put.

Arguments (comma-separated): steps=N (per point), widths=32/64/128 (slash-separated; the first
is muP's base width), lr_exps=-12/-2 (the log2 LR range, one point per integer: wide enough that
every optimum is interior), seeds=N (every point trains N times, seeds config.seed..+N-1, each
with its own init and data order; the curves and optima use the mean held-out loss), runlocal
(2 widths x 2 LRs x 2 seeds x 10 steps). Measured cost is in docs/mup.md.
"""

from experiments.common import base_config, parse_arg


def get_config(arg: str = ""):
    args = parse_arg(arg, steps=300, widths="32/64/128", lr_exps="-12/-2", seeds=3, runlocal=False)
    config = base_config("tiny")
    m = config.model
    m.n_layers, m.n_heads = 2, 2
    m.tie_embeddings = False  # muP's readout (multiplier, LR) is its own matrix
    m.mup_base_width = int(args.widths.split("/")[0])
    lo, hi = (int(e) for e in args.lr_exps.split("/"))
    t = config.train
    t.steps = 10 if args.runlocal else args.steps
    t.warmup_steps = max(1, t.steps // 10)
    t.clip_norm = 0.0  # clipping rescales gradients per width differently under SP and muP
    t.grad_accum = 1
    t.eval_every = t.ckpt_every = t.steps
    t.log_every = max(1, t.steps // 5)
    t.eval_batches = 2 if args.runlocal else 16
    config.data.seq_len, config.data.batch_size = 64, 8
    config.transfer = dict(
        parametrizations=("sp", "mup"),
        widths=tuple(int(w) for w in args.widths.split("/"))[: 2 if args.runlocal else None],
        lr_exps=tuple(range(lo, hi + 1))[: 2 if args.runlocal else None],
        seeds=2 if args.runlocal else args.seeds,
    )
    if lo > hi or config.transfer.seeds < 1:
        raise ValueError(f"lr_exps={args.lr_exps} must be lo/hi with lo <= hi, seeds >= 1")
    return config


def point_config(config, parametrization: str, width: int, lr_exp: int):
    """The run config of one grid point: width d_model (d_ff = 4x), LR 2**lr_exp."""
    c = config.copy_and_resolve_references()
    with c.unlocked():
        del c.transfer
    c.model.d_model, c.model.d_ff = width, 4 * width
    c.model.mup = parametrization == "mup"
    c.train.lr = 2.0**lr_exp
    return c
