r"""muP coordinate check: mean |activation| per layer after a few large-LR steps, across widths.

  python launch/run.py --config experiments/coord_check.py --workdir runs/coord_check

A study (studies/stages.py): one run per (SP or muP, width) of a 2-layer decoder (4 heads, d_ff =
4 width, untied readout, constant LR, no clipping or weight decay) in `<workdir>/<sp|mup>_d<width>`;
the `activations` stage records each run's mean |x| per tagged activation (models/activations.py)
on one held-out batch and its slope against width (docs/mup.md). Under muP the slopes are near 0.

Arguments (comma-separated): widths=32/64/128, lr=0.02, steps=4, layers=2, seq_len=64.
"""

import os

from common import atomic
from experiments.common import base_config, parse_arg
from studies import mup as analysis
from studies.mup import PARAMETRIZATIONS
from studies.stages import Stage


def get_config(arg: str = ""):
    args = parse_arg(arg, widths="32/64/128", lr=0.02, steps=4, layers=2, seq_len=64)
    widths = tuple(int(w) for w in args.widths.split("/"))
    if len(widths) < 2 or min(widths) < 4:
        raise ValueError(f"widths={args.widths} needs two or more widths of at least 4")
    config = base_config("tiny")
    config.kind, config.coord = "study", dict(widths=widths)
    m = config.model
    m.n_layers, m.n_heads, m.tie_embeddings = args.layers, 4, False
    m.mup.base_width = min(widths)
    t = config.train
    t.lr, t.schedule, t.warmup_steps, t.steps = args.lr, "constant", 0, args.steps
    t.clip_norm, t.weight_decay, t.grad_accum, t.eval_batches = 0.0, 0.0, 1, 1
    t.eval_every = t.ckpt_every = t.log_every = args.steps
    config.data.seq_len, config.data.batch_size = args.seq_len, 8
    return config


def get_stages(config, workdir: str) -> list[Stage]:
    runs = {
        (p, w): (f"{p}_d{w}", analysis.width_run(config, "coord", p, w))
        for p in PARAMETRIZATIONS
        for w in config.coord.widths
    }

    def activations(stage_dir: str, rows: dict) -> dict:
        import jax.numpy as jnp

        from data.pipeline import BATCH_KEYS, make_eval_batches
        from models import get_model
        from models.activations import mean_abs
        from train.checkpoint import load_params

        result = {p: {"table": {}} for p in PARAMETRIZATIONS}
        for (p, w), (name, c) in runs.items():
            probe = make_eval_batches(c.data, num_batches=1)[0]
            probe = {k: jnp.asarray(v) for k, v in probe.items() if k in BATCH_KEYS}
            params = load_params(os.path.join(workdir, name))
            result[p]["table"][w] = mean_abs(
                get_model(c.model.family).apply, params, probe, c.model
            )
        for r in result.values():
            r["slopes"] = analysis.slopes(r["table"])
        atomic.write_json(os.path.join(stage_dir, "coord_check.json"), result)
        analysis.plot_coords(result, os.path.join(stage_dir, "coord_check.png"))
        return result

    stages = [Stage(name, c) for name, c in runs.values()]
    return stages + [Stage("activations", action=activations)]


def report(config, rows: dict) -> str:
    """Per parametrization: mean |x| per activation and width, and the slope against width."""
    result, widths, t = rows["activations"], config.coord.widths, config.train
    lines = []
    for p in PARAMETRIZATIONS:
        table = {int(w): v for w, v in result[p]["table"].items()}
        lines += [
            f"{p.upper()} (lr {t.lr}, {t.steps} steps): mean |x| per width",
            "",
            "| activation | " + " | ".join(str(w) for w in widths) + " | slope |",
            "| --- |" + " --- |" * (len(widths) + 1),
        ]
        for label, slope in result[p]["slopes"].items():
            cells = " | ".join(f"{table[w][label]:.3g}" for w in widths)
            lines.append(f"| {label} | {cells} | {slope:.2f} |")
        lines.append("")
    return "\n".join(lines).rstrip()
