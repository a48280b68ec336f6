r"""A run planned by `launch/plan.py`: a GPT-3-style decoder of a given shape, for a token budget.

  python launch/plan.py --law chinchilla --flops 1e21 --topology v5p-64 \
      --write experiments/planned_1e21.py
  python launch/aot.py --config experiments/planned_1e21.py --topology v5p-64
  python launch/run.py --config experiments/planned_1e21.py --workdir gs://BUCKET/p  # on the slice

The files `launch/plan.py --write` emits hold one `PLAN` dict and call `planned_config(PLAN,
arg)`; `runlocal` shrinks steps, batch and context (not the model). The architecture and
optimizer are experiments/gpt3.py's (pre-LN, GELU, learned positions, tied embeddings, AdamW
b2 0.95, weight decay 0.1, 375M warmup tokens, cosine to 10%), over a 2,048-token context and
GPT-2's vocabulary size. The peak learning rate and the batch (rows of
2,048 tokens) are GPT-3's (Brown et al. 2020, table 2.1), interpolated in log parameters between
its sizes; the run's steps spend the planned D tokens.
"""

import math

import numpy as np

from experiments.common import (
    Plan,
    base_config,
    parse_arg,
    set_accelerator,
    set_runlocal,
    set_tokenizer,
)
from experiments.gpt3 import CONTEXT, GPT3, WARMUP_TOKENS, gpt3_model

VOCAB = 50257
# GPT-3's sizes in parameters, for interpolating its learning rates and batches.
_GPT3_PARAMS = {
    "125m": 125e6,
    "350m": 350e6,
    "760m": 760e6,
    "1.3b": 1.3e9,
    "2.7b": 2.7e9,
    "6.7b": 6.7e9,
    "13b": 13e9,
    "175b": 175e9,
}


def gpt3_hyper(params: float) -> tuple[float, int]:
    """(peak lr, batch rows of 2,048 tokens) interpolated in log N from GPT-3's table 2.1."""
    log_n = np.log([_GPT3_PARAMS[k] for k in GPT3])
    lr = np.exp(np.interp(math.log(params), log_n, np.log([GPT3[k][0] for k in GPT3])))
    rows = np.exp(np.interp(math.log(params), log_n, np.log([GPT3[k][1] for k in GPT3])))
    return float(lr), int(128 * round(rows / 128))


def model_config(shape: dict):
    """The model config of a planned shape (n_layers, d_model, n_heads, d_ff)."""
    config = base_config("tiny")
    gpt3_model(config.model)
    set_tokenizer(config, "bpe", VOCAB)
    m = config.model
    m.n_layers, m.d_model, m.n_heads, m.d_ff = (
        shape[k] for k in ("n_layers", "d_model", "n_heads", "d_ff")
    )
    m.size = f"L{shape['n_layers']}xD{shape['d_model']}"
    return config


def planned_config(plan: dict, arg: str = ""):
    """The run config of a plan: shape, tokens, slice (`target`), mesh and microbatches.

    `plan` keys: n_layers, d_model, n_heads, d_ff, tokens, target, and optionally mesh (axis
    sizes), grad_accum, lr, batch_rows. `arg`: `runlocal` shrinks it to a 20-step smoke run.
    """
    args = parse_arg(arg, runlocal=False)
    config = model_config(plan)
    params = 12 * plan["n_layers"] * plan["d_model"] ** 2
    lr, rows = gpt3_hyper(params)
    lr, rows = plan.get("lr", lr), plan.get("batch_rows", rows)
    config.data.seq_len, config.data.batch_size = CONTEXT, rows
    tokens_per_step = rows * CONTEXT
    steps = max(math.ceil(plan["tokens"] / tokens_per_step), 1)
    config.train.steps = steps
    config.train.lr = lr
    config.train.warmup_steps = min(round(WARMUP_TOKENS / tokens_per_step), steps // 10)
    config.train.eval_every = max(steps // 20, 1)
    config.train.ckpt_every = max(steps // 100, 1)
    config.train.log_every = 10
    set_accelerator(config, Plan(plan["target"], plan.get("mesh"), plan.get("grad_accum", 1)))
    if plan.get("rules"):
        config.parallel.rules = plan["rules"]
    if args.runlocal:
        set_runlocal(config)
        config.data.seq_len = 128
    return config


def get_config(arg: str = ""):
    """The planner's default example: Chinchilla's law at 1e21 FLOPs (launch/plan.py's docs)."""
    plan = dict(n_layers=20, d_model=2560, n_heads=20, d_ff=10240, tokens=97_605_397_588)
    plan |= dict(target="v5p-64", mesh=dict(data=1, stage=1, fsdp=32, tensor=1), batch_rows=512)
    return planned_config(plan, arg)
