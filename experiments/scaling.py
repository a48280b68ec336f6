r"""Scaling-law sweep: a ladder of model sizes x token budgets (+ IsoFLOP profiles), fitted.

  python launch/run.py --config experiments/scaling.py              # the 2-core CPU default
  python launch/run.py --config experiments/scaling.py --dry_run    # the grid and its cost only
  python launch/run.py --config experiments/scaling.py:preset=smoke,schedule=cosine

Arguments (comma-separated): preset=smoke|cpu|accel, schedule=wsd|cosine, mode=grid (default) |
isoflop|both, family=decoder|encoder|encdec (GPT causal LM, BERT masked LM, T5 span
corruption; experiments/families.py), bootstrap=N (resamples for the confidence intervals),
tokenizer=byte|bpe|unigram|PATH.model and vocab=N (experiments/common.py: a SentencePiece
vocabulary is trained on the train split first; token budgets then count its tokens, and the
report's bits/byte column compares runs across tokenizers), verify=K (a pre-registered
prediction beyond the grid: after the fit, the rung after the ladder's largest trained on the
tokens that spend K x the sweep's largest compute; each law form's
prediction and bootstrap interval go to verify/prediction.json before that run starts, and the
report scores them against its loss; off by default), lrs=a/b/c/d (one peak lr per ladder size,
from experiments/lr_scan.py, instead of the width rule).

The model ladder has a fixed aspect ratio: a model of k layers is `aspect * k` wide with heads of
`head_dim`, so non-embedding parameters grow as 12 * aspect^2 * k^3. Token budgets D form a
geometric grid. IsoFLOP points: for each FLOP budget C and each size, D = C / (FLOPs per token of
that size, attention and unembedding included; models/counting.py), kept when D lies within the
preset's bounds.

schedule=wsd (the default) trains one warmup-stable run per size and branches a cooldown off it at
each token budget, the last `train.decay_fraction` (20%) of that budget's steps (Hägele et al. 2024,
1-sqrt shape, to zero); schedule=cosine trains every (N, D) point from scratch with its own cosine
schedule (the Chinchilla approach-1 standard). The sweep runner is studies/sweep.py; the fits,
plots and report are scaling/.
"""

import copy

import ml_collections
import numpy as np

from experiments.common import base_config, parse_arg, set_tokenizer
from experiments.families import set_family
from models.counting import count_params, flops_per_token

# name: (ladder of k, aspect (d_model per layer), head_dim, seq_len, batch, microbatches,
#        token budgets D, FLOP budgets C, max IsoFLOP tokens, warmup steps, peak lr at width 128)
PRESETS = {
    # Seconds on 8 simulated CPU devices; exercises every code path in the test suite.
    "smoke": dict(
        ladder=(1, 2, 3),
        aspect=32,
        head_dim=16,
        seq_len=64,
        batch_size=8,
        grad_accum=1,
        tokens=(10_240, 20_480),  # 3 x 2 = 6 points: enough for the 5-parameter fit
        budgets=(),
        max_isoflop_tokens=0,
        warmup_steps=4,
        lr=3e-3,
        eval_batches=2,
    ),
    # The default: 4 sizes (12k-0.79M non-embedding parameters, 1.8 decades) x 4 token budgets
    # (0.5M-5.1M, 1 decade) on a 2-core CPU. Batches of 4 x 128 tokens: at these sizes the loss
    # per token improves with more, smaller steps (runs of a few hundred steps are still in the
    # fast early phase that no power law describes). With 8 x 256 the best law form mispredicted
    # the top-compute points by up to 7.3%, with 8 x 128 by 3.9%, with 4 x 128 by 1.9%
    # (docs/scaling.md).
    # About 16 minutes here. mode=both adds two IsoFLOP budgets whose minima fall in the ladder.
    "cpu": dict(
        ladder=(1, 2, 3, 4),
        aspect=32,
        head_dim=32,
        seq_len=128,
        batch_size=4,
        grad_accum=1,
        tokens=(499_712, 1_101_824, 2_400_256, 5_120_000),  # 976, 2152, 4688, 10000 steps
        budgets=(3e12, 6e12),
        max_isoflop_tokens=25_000_000,
        warmup_steps=50,
        lr=3e-3,
        eval_batches=64,
    ),
    # For an accelerator slice (untested here): 6 sizes, 10M-400M non-embedding parameters,
    # 0.5B-20B tokens of a catalog dataset such as c4 (set data.dataset and data.tokenizer).
    "accel": dict(
        ladder=(4, 6, 8, 10, 12, 16),
        aspect=64,
        head_dim=64,
        seq_len=1024,
        batch_size=256,
        grad_accum=1,
        tokens=(500_000_000, 1_500_000_000, 5_000_000_000, 20_000_000_000),
        budgets=(1e18, 3e18, 1e19),
        max_isoflop_tokens=40_000_000_000,
        warmup_steps=1000,
        lr=3e-3,
        eval_batches=100,
    ),
}


def get_config(arg: str = ""):
    args = parse_arg(
        arg,
        {"preset": PRESETS, "schedule": ("wsd", "cosine"), "mode": ("grid", "isoflop", "both")},
        preset="cpu",
        schedule="wsd",
        mode="grid",
        family="decoder",
        bootstrap=200,
        tokenizer="byte",
        vocab=4096,
        verify=0,
        lrs="",
    )
    if args.verify < 0:
        raise ValueError(f"verify={args.verify} must be 0 (off) or a compute factor K >= 1")
    p = PRESETS[args.preset]
    lrs = tuple(float(x) for x in args.lrs.split("/")) if args.lrs else ()
    if lrs and len(lrs) != len(p["ladder"]):
        raise ValueError(
            f"lrs={args.lrs!r} gives {len(lrs)} learning rates for a ladder of "
            f"{len(p['ladder'])} sizes; give one per size, '/'-separated (experiments/lr_scan.py)"
        )
    config = base_config("tiny")
    config.kind = "sweep"
    set_tokenizer(config, args.tokenizer, args.vocab)
    config.data.seq_len = p["seq_len"]
    set_family(config, args.family)  # architecture and objective (experiments/families.py)
    config.data.batch_size = p["batch_size"]
    config.train.grad_accum = p["grad_accum"]
    config.train.warmup_steps = p["warmup_steps"]
    config.train.eval_batches = p["eval_batches"]
    config.train.log_every = 10
    config.train.schedule = "cosine" if args.schedule == "cosine" else "wsd"
    config.train.decay_shape = "1-sqrt"
    config.train.min_lr_ratio = 0.1 if args.schedule == "cosine" else 0.0
    config.train.decay_fraction = 0.2  # wsd: each branch cools down over the last 20% of steps
    config.sweep = ml_collections.ConfigDict(
        dict(
            preset=args.preset,
            schedule=args.schedule,
            mode=args.mode,
            ladder=p["ladder"],
            aspect=p["aspect"],
            head_dim=p["head_dim"],
            tokens=p["tokens"],
            budgets=p["budgets"],
            max_isoflop_tokens=p["max_isoflop_tokens"],
            lr=p["lr"],  # peak lr at d_model = lr_base_width, scaled by (base / d_model)^exponent
            lr_base_width=128,
            lr_width_exponent=0.5,
            # One peak lr per ladder size (experiments/lr_scan.py's tuned values) instead of the
            # width rule; a size beyond the ladder gets the power law in width through them.
            lrs=lrs,
            bootstrap=args.bootstrap,
            seed=0,  # bootstrap resampling seed
            # Comma-separated point ids: train only these (one cluster job of a sweep handed
            # out by launch/slurm.py or launch/tpu.py); '' = all points, then the fit.
            only="",
            # K > 0: after the fit, predict a run one rung beyond the ladder that spends K x the
            # sweep's largest C, write the prediction, then train it and score the prediction
            # (studies/sweep.py).
            verify=args.verify,
        )
    )
    return config


def model_shape(sweep, k: int) -> dict:
    """The ladder's k-th model: k layers, `aspect * k` wide, heads of `head_dim`."""
    d_model = sweep.aspect * k
    return dict(n_layers=k, d_model=d_model, n_heads=max(1, d_model // sweep.head_dim))


def point_config(config, point: dict):
    """The single-run config of one sweep point (no `sweep` block; steps from its token budget)."""
    d = config.to_dict()
    d.pop("sweep")
    c = ml_collections.ConfigDict(copy.deepcopy(d))
    for key in ("n_layers", "d_model", "n_heads"):
        c.model[key] = point[key]
    c.model.d_ff = 4 * point["d_model"]
    c.model.size = f"L{point['n_layers']}xD{point['d_model']}"
    c.train.steps = point["steps"]
    c.train.lr = point["lr"]
    c.train.eval_every = point["steps"]
    c.train.ckpt_every = max(point["steps"] // 4, 1)
    return c


def _rung_model(config, k: int):
    """The model config of the ladder's k-th rung (d_ff = 4 d_model)."""
    shape = model_shape(config.sweep, k)
    m = ml_collections.ConfigDict(config.model.to_dict())
    m.update(shape, d_ff=4 * shape["d_model"])
    return m


def _target_len(config) -> int | None:
    """Decoder tokens per row of an encoder-decoder point (None for the other families)."""
    return config.objective_args.target_len or None


def _tokens_label(tokens: int) -> str:
    return f"{tokens / 1e6:.3g}M" if tokens < 1e9 else f"{tokens / 1e9:.3g}B"


def make_point(config, k: int, steps: int, budget: float | None = None) -> dict:
    """The point of the ladder's k-th model trained `steps` steps (see `get_sweep` for its keys)."""
    sweep = config.sweep
    shape = model_shape(sweep, k)
    m = _rung_model(config, k)
    counts = count_params(m)
    fpt = flops_per_token(m, config.data.seq_len, target_len=_target_len(config))
    fpt = fpt["flops_per_token"]
    tokens = steps * config.data.batch_size * config.data.seq_len
    return dict(
        shape,
        id=f"L{k}xD{shape['d_model']}@{_tokens_label(tokens)}",
        steps=steps,
        tokens=tokens,
        lr=peak_lr(sweep, k),
        params=counts["non_embedding"],
        params_total=counts["total"],
        flops_per_token=fpt,
        flops=fpt * tokens,
        budget=budget,
        grid=budget is None,
    )


def peak_lr(sweep, k: int) -> float:
    """The peak lr of the ladder's k-th model: the width rule, or `sweep.lrs` (one per size)."""
    width = model_shape(sweep, k)["d_model"]
    if not sweep.get("lrs"):  # also sweeps configured before `lrs` existed
        return float(sweep.lr * (sweep.lr_base_width / width) ** sweep.lr_width_exponent)
    ladder = list(sweep.ladder)
    if k in ladder:
        return float(sweep.lrs[ladder.index(k)])
    widths = np.log([model_shape(sweep, j)["d_model"] for j in ladder])
    slope, icept = np.polyfit(widths, np.log(sweep.lrs), 1)
    return float(np.exp(icept + slope * np.log(width)))


def _min_steps(config) -> int:
    """The shortest run: it must warm up and still have a stable phase before its cooldown."""
    return int(np.ceil(config.train.warmup_steps / (1 - config.train.decay_fraction))) + 1


def verify_point(config, tokens: float) -> dict:
    """The verification run (`verify=K`): the rung after the ladder's largest, on `tokens`
    (rounded to whole steps) with the sweep's recipe; studies/sweep.py trains it after the fit."""
    tokens_per_step = config.data.batch_size * config.data.seq_len
    steps = max(round(tokens / tokens_per_step), _min_steps(config))
    return make_point(config, max(config.sweep.ladder) + 1, steps) | {"grid": False}


def get_sweep(config) -> list[dict]:
    """Expands `config.sweep` into points sorted by size, then tokens.

    Each point: id, n_layers, d_model, n_heads, steps, tokens, lr, params (non-embedding),
    params_total, flops_per_token, flops, budget (the IsoFLOP budget C the point belongs to, or
    None), grid (whether it is a point of the N x D grid).
    A point that is both a grid and an IsoFLOP point (same size and steps) appears once.
    """
    sweep = config.sweep
    tokens_per_step = config.data.batch_size * config.data.seq_len
    min_steps = _min_steps(config)
    points: dict[tuple[int, int], dict] = {}

    def add(k: int, steps: int, budget: float | None):
        key = (k, steps)
        if key in points:
            points[key]["budget"] = points[key]["budget"] or budget
            points[key]["grid"] = points[key]["grid"] or budget is None
            return
        points[key] = make_point(config, k, steps, budget)

    for k in sweep.ladder:
        if sweep.mode in ("grid", "both"):
            for tokens in sweep.tokens:
                add(k, max(round(tokens / tokens_per_step), min_steps), None)
        if sweep.mode in ("isoflop", "both"):
            m = _rung_model(config, k)
            fpt = flops_per_token(m, config.data.seq_len, target_len=_target_len(config))
            fpt = fpt["flops_per_token"]
            for budget in sweep.budgets:
                steps = round(budget / fpt / tokens_per_step)
                if min_steps <= steps and steps * tokens_per_step <= sweep.max_isoflop_tokens:
                    add(k, steps, float(budget))
    return [points[key] for key in sorted(points)]
