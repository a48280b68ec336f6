r"""Adapting a pre-trained byte-level GPT to a held-out slice of the corpus: full fine-tuning, LoRA
and prompt tuning compared on the same task (docs/adapting.md).

The base model is pre-trained on the top-level stdlib modules; the task is the `asyncio` package,
which pre-training never sees. All runs, the base model before adaptation and the table
(`<workdir>/report.md`: held-out loss, trainable parameters, median step time) as one study:

  python launch/run.py --config experiments/adapt.py --workdir runs/adapt   # ~6 min, 2-core CPU

Or one phase (`method=pretrain|full|lora|prompt`, `base=` the pre-training workdir):

  python launch/run.py --config experiments/adapt.py:method=lora,base=runs/adapt/pretrain \
      --workdir runs/adapt/lora

Arguments: method (default study), base, size (default tiny: 2 x 128), steps (adaptation steps),
pre_steps, rank (LoRA), prompt_len.
"""

import os
import statistics

from experiments.common import base_config, parse_arg
from studies.stages import Stage, initial_eval, run_config
from train.metrics import read_metrics

METHODS = ("pretrain", "full", "lora", "prompt")
# Peak learning rates per method: the fewer the trained parameters, the larger the usable step.
LR = {"pretrain": 3e-3, "full": 1e-3, "lora": 5e-3, "prompt": 3e-2}


def stdlib_glob(sub: str) -> str:
    return os.path.join(os.path.dirname(os.__file__), sub, "*.py")


def _schedule(config, steps: int, method: str) -> None:
    t = config.train
    t.steps, t.lr, t.warmup_steps = steps, LR[method], max(steps // 10, 1)
    t.eval_every = t.ckpt_every = steps
    t.eval_batches, t.log_every = 8, 10
    t.weight_decay = 0.0 if method in ("lora", "prompt") else 0.1


def get_config(arg: str = ""):
    args = parse_arg(
        arg,
        {"method": ("study", *METHODS)},
        method="study",
        base="",
        size="tiny",
        steps=150,
        pre_steps=300,
        rank=8,
        prompt_len=16,
    )
    config = base_config(args.size)
    config.data.update(seq_len=128, batch_size=8, val_fraction=0.2, glob=stdlib_glob(""))
    config.model.max_len = 256
    _schedule(config, args.pre_steps, "pretrain")
    if args.method == "pretrain":
        return config
    if args.method == "study":
        config.kind = "study"
        config.study = dict(steps=args.steps, rank=args.rank, prompt_len=args.prompt_len)
        return config
    if not args.base:
        raise ValueError(f"method={args.method} needs base=<pre-training workdir>")
    return adapted(config, args.method, args.base, args.steps, args.rank, args.prompt_len)


def adapted(pretrain, method: str, base: str, steps: int, rank: int, prompt_len: int):
    """The adaptation run of `method` on the held-out package from the weights of `base`."""
    config = pretrain.copy_and_resolve_references()
    _schedule(config, steps, method)
    config.data.glob = stdlib_glob("asyncio")
    config.init_from, config.adapt.method = base, method
    config.adapt.lora.update(rank=rank, alpha=2.0 * rank, targets="q,v,o")
    config.adapt.prompt.length = prompt_len
    return config


def get_stages(config, workdir: str) -> list[Stage]:
    """pretrain, the base model on the task ('before'), the three methods, then their counts."""
    pretrain = run_config(config, "study")
    base = os.path.join(workdir, "pretrain")
    runs = {m: adapted(pretrain, m, base, **config.study) for m in ("full", "lora", "prompt")}

    def before(stage_dir: str, rows: dict) -> dict:
        """The base model on the task before adaptation: a 'full' run's evaluation at step 0."""
        from adapt import wrap
        from data.pipeline import make_eval_batches

        c = runs["full"]
        run, row = initial_eval(
            c, lambda _: make_eval_batches(c.data, num_batches=c.train.eval_batches)
        )
        return {**row, "trainable": 0, "params": wrap.count_trainable(run.state.params, c.adapt)[1]}

    def counts(stage_dir: str, rows: dict) -> dict:
        """Trainable parameters (from shapes) and median step time of each method's run."""
        out = {}
        for m, c in runs.items():
            logged = read_metrics(os.path.join(workdir, m, "metrics.jsonl"))
            rates = [
                r["perf/tokens_per_s"]
                for r in logged
                if "perf/tokens_per_s" in r and r["step"] > 10
            ]
            tokens = c.data.batch_size * c.data.seq_len
            ms = 1000.0 * tokens / statistics.median(rates) if rates else float("nan")
            out[m] = dict(zip(("trainable", "params"), _count(c), strict=True), step_ms=ms)
        return out

    return [
        Stage("pretrain", pretrain),
        Stage("before", action=before),
        *(Stage(m, c) for m, c in runs.items()),
        Stage("counts", action=counts),
    ]


def report(config, rows: dict) -> str:
    lines = [
        "| method | held-out loss (nats/token) | bits/byte | trainable | share | step (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("before", "full", "lora", "prompt"):
        r = rows[name]
        c = rows["counts"].get(name, {**r, "step_ms": float("nan")})
        label = "base (no adaptation)" if name == "before" else name
        lines.append(
            f"| {label} | {r['eval/loss']:.4f} | {r['eval/bits_per_byte']:.4f} | "
            f"{c['trainable']:,} | {100 * c['trainable'] / c['params']:.2f}% | "
            f"{c['step_ms']:.1f} |"
        )
    return "\n".join(lines)


def _count(config) -> tuple[int, int]:
    """(trainable, total) parameters of the adapted tree, from shapes alone."""
    import flax.linen as nn
    import jax

    from adapt import wrap
    from models import get_model

    model = wrap.AdaptedModel(get_model(config.model.family), config.adapt, 360)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), config.model)))
    return wrap.count_trainable(shapes, config.adapt)
