r"""Adapting a pre-trained byte-level GPT to a held-out slice of the corpus: full fine-tuning, LoRA
and prompt tuning compared on the same task.

The base model is pre-trained on the top-level standard-library modules (`<stdlib>/*.py`); the
adaptation task is the `asyncio` package (`<stdlib>/asyncio/*.py`), which pre-training never
sees, split into train/validation files by the corpus's path hash. All four runs in one command
(`launch/adapt_table.py` trains them in turn and prints the table):

  python launch/adapt_table.py --workdir runs/adapt   # about 6 minutes on a loaded 2-core CPU

or one phase at a time (`method=pretrain|full|lora|prompt`, `base=` the pre-training workdir):

  python launch/run.py --config experiments/adapt.py:method=pretrain --workdir runs/adapt/pretrain
  python launch/run.py --config experiments/adapt.py:method=lora,base=runs/adapt/pretrain \
      --workdir runs/adapt/lora

Arguments: method, base, size (default tiny: 2 x 128), steps (adaptation steps), pre_steps,
rank (LoRA), prompt_len.
"""

import os

from experiments.common import base_config, parse_arg

METHODS = ("pretrain", "full", "lora", "prompt")
# Peak learning rates per method: the fewer the trained parameters, the larger the usable step.
LR = {"pretrain": 3e-3, "full": 1e-3, "lora": 5e-3, "prompt": 3e-2}


def stdlib_glob(sub: str) -> str:
    return os.path.join(os.path.dirname(os.__file__), sub, "*.py")


def get_config(arg: str = ""):
    args = parse_arg(
        arg,
        method="pretrain",
        base="",
        size="tiny",
        steps=150,
        pre_steps=300,
        rank=8,
        prompt_len=16,
    )
    if args.method not in METHODS:
        raise ValueError(f"method={args.method!r} is unknown; choose one of {METHODS}")
    config = base_config(args.size)
    config.data.seq_len = 128
    config.data.batch_size = 8
    config.data.val_fraction = 0.2
    config.model.max_len = 256
    t = config.train
    t.steps = args.pre_steps if args.method == "pretrain" else args.steps
    t.lr = LR[args.method]
    t.warmup_steps = max(t.steps // 10, 1)
    t.eval_every = t.steps
    t.eval_batches = 8
    t.ckpt_every = t.steps
    t.log_every = 10
    t.weight_decay = 0.0 if args.method in ("lora", "prompt") else 0.1
    if args.method == "pretrain":
        config.data.glob = stdlib_glob("")
        return config
    if not args.base:
        raise ValueError(f"method={args.method} needs base=<pre-training workdir>")
    config.data.glob = stdlib_glob("asyncio")
    config.init_from = args.base
    config.adapt.method = args.method
    config.adapt.lora.rank = args.rank
    config.adapt.lora.alpha = 2.0 * args.rank
    config.adapt.lora.targets = "q,v,o"
    config.adapt.prompt.length = args.prompt_len
    return config
