r"""Encoder-decoder span corruption (T5) on the embedded stdlib corpus, byte-level by default.

  python launch/run.py --config experiments/t5.py:size=tiny --workdir /tmp/t5_tiny
  python launch/aot.py --config experiments/t5.py:size=xxl --topology v5p-128

Arguments (comma-separated): size=tiny|mini|small|...|xl|xxl, version=1.0|1.1, runlocal, steps=N,
tokenizer=byte|bpe|unigram|PATH.model, vocab=N, target=SLICE (xl/xxl: plan for another slice).

The architecture is T5's: pre-norm RMSNorm without bias (eps 1e-6), no biases anywhere, no
1/sqrt(head dim) scaling of attention logits, relative-position bias (32 buckets, max distance
128) shared across the layers of each stack, bidirectional in the encoder and causal in the
decoder; v1.0 has a ReLU MLP and tied embeddings rescaled by d_model**-0.5, v1.1 a gated-GELU MLP
and an untied output layer. Objective: span corruption with noise density 0.15 and mean span 3
(objectives/span_corruption.py); encoder rows of 128 tokens, decoder rows of `target_len`.
Reported loss is nats per target token (sentinels and EOS included).

Presets (2-core CPU, shared with other jobs): size=tiny is 300 steps of 16 x 128 input tokens.

size=xl and size=xxl are T5 v1.1 XL (2.85B) and XXL (11.1B) as released (models/sizes.py; note
these names are not the `xl` row of the size ladder), accelerator presets planned in `PLANS`:
inputs of 512 tokens, targets of 114, 2048 rows per batch (the T5 paper's 2^11 x 512), a
32,100-id unigram vocabulary (32,000 + 100 sentinels) in a 32,128-row table, 2^19 steps.
The optimizer is AdamW at 1e-4 with 10,000 warmup steps and a cosine decay (T5 used Adafactor at
an inverse-square-root 1e-2; this codebase has AdamW only).
"""

from experiments.common import (
    Plan,
    base_config,
    parse_arg,
    set_accelerator,
    set_runlocal,
    set_schedule,
    set_tokenizer,
)
from experiments.families import set_family, t5_model

# size: (steps, peak lr, warmup)
PRESETS = {"tiny": (300, 3e-3, 30), "mini": (1000, 2e-3, 100), "small": (1800, 1e-3, 150)}

# Published T5 v1.1 sizes: size -> (models/sizes.py row, the slice planned for and its split).
PUBLISHED = {
    "xl": ("t5.1.1-xl", Plan("v5p-64")),
    "xxl": ("t5.1.1-xxl", Plan("v5p-128")),
}


def presets() -> list[tuple[str, str]]:
    """The accelerator sizes (T5 v1.1 XL, XXL) as (config argument, planned slice)."""
    return [(f"size={size}", plan.target) for size, (_, plan) in PUBLISHED.items()]


def get_config(arg: str = ""):
    args = parse_arg(
        arg,
        size="small",
        version="1.1",
        runlocal=False,
        steps=0,
        tokenizer="byte",
        vocab=4096,
        target="",
    )
    if args.size in PUBLISHED:
        return _published(args)
    if args.target:
        raise ValueError(f"target={args.target}: only size=xl|xxl are accelerator presets")
    config = base_config(args.size)
    set_tokenizer(config, args.tokenizer, args.vocab)
    config.data.seq_len = 128
    set_family(config, "encdec")
    t5_model(config.model, args.version)
    steps, lr, warmup = PRESETS.get(args.size, (10_000, 1e-3, 1000))
    set_schedule(config, args.steps or steps, lr, warmup)
    if args.runlocal:
        set_runlocal(config)
    return config


def _published(args):
    """T5 v1.1 XL / XXL as pre-trained in the T5 paper's setting (see the module docstring)."""
    if args.version != "1.1":
        raise ValueError(f"size={args.size} is a T5 v1.1 model; version={args.version} differs")
    shape, plan = PUBLISHED[args.size]
    config = base_config(shape)
    set_tokenizer(config, "unigram", 32100)
    config.data.seq_len, config.data.batch_size = 512, 2048
    set_family(config, "encdec")
    t5_model(config.model, "1.1")
    config.objective_args.target_len = 114
    set_schedule(config, args.steps or 2**19, 1e-4, 10_000)
    set_accelerator(config, plan, args.target)
    if args.runlocal:
        set_runlocal(config)
        config.data.seq_len = 128
        config.objective_args.target_len = 32
    return config
