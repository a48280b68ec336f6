r"""Decoder-only LM (GPT) on the embedded stdlib corpus: CPU presets and accelerator sizes.

  python launch/run.py --config experiments/gpt.py:size=tiny --workdir /tmp/gpt_tiny
  python launch/aot.py --config experiments/gpt.py:size=xl --topology v5litepod-16

Arguments (comma-separated): size=tiny|mini|small|medium|large|base|xl, runlocal (a few steps,
for a smoke test), steps=N (override the preset's step count), tokenizer=byte|bpe|unigram|PATH.model
and vocab=N (SentencePiece vocabulary size, trained on the corpus's train split on first use),
target=SLICE (accelerator sizes: the slice to plan for, default the size's own in `ACCELERATOR`),
arch=nanogpt|nanogpt_nobias (the architecture of nanoGPT's GPT instead of the default pre-LN
rotary one: `set_nanogpt`; launch/bench.py times it against nanoGPT itself).

Presets and measured cost on a 2-core CPU (docs/training.md):
  size=tiny:  2 x 128,  600 steps of 16 x 256 tokens (2.5M tokens), about 2 minutes.
  size=small: 4 x 256, 1800 steps of 16 x 256 tokens (7.4M tokens), under 27 minutes.
The CPU presets run each batch of 16 rows as 4 microbatches of 4 (`train.grad_accum=4`): the
update is identical (tests/test_train_step.py), and on XLA:CPU the smaller working set is faster
(measured here: tiny 22.8k -> 30.0k tokens/s, small ~4.9k -> ~5.9k tokens/s).

The larger sizes are accelerator runs (`set_accelerator`: layer scan, full remat, bf16 compute,
FSDP over the slice): 10,000 steps of 256 x 2048 tokens with a 32,768-id BPE vocabulary (unless
`tokenizer=` says otherwise). docs/presets.md has each one compiled for its slice.
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

# size: (steps, peak lr, warmup, microbatches per step)
PRESETS = {
    "tiny": (600, 3e-3, 50, 4),
    "mini": (1500, 3e-3, 100, 4),
    "small": (1800, 2.5e-3, 100, 4),
}

# Accelerator sizes: size -> the slice each is planned for and its split (FSDP over the slice).
ACCELERATOR = {
    "medium": Plan("v5litepod-16"),
    "large": Plan("v5litepod-16"),
    "base": Plan("v5litepod-16"),
    "xl": Plan("v5litepod-16"),
}


def presets() -> list[tuple[str, str]]:
    """The accelerator sizes as (config argument, planned slice)."""
    return [(f"size={size}", plan.target) for size, plan in ACCELERATOR.items()]


def set_nanogpt(config, bias: bool = True) -> None:
    """The architecture of nanoGPT's `GPT` (github.com/karpathy/nanoGPT, model.py): GPT-2's
    learned positions over `seq_len` rows, exact (erf) GELU, LayerNorm eps 1e-5, tied
    embeddings, and with `bias` (nanoGPT's default) biases in every linear layer and norm."""
    m = config.model
    m.positions, m.max_len, m.activation = "learned", config.data.seq_len, "gelu_exact"
    m.norm_type, m.norm_position, m.norm_eps = "layernorm", "pre", 1e-5
    m.tie_embeddings, m.d_ff = True, 4 * m.d_model
    m.norm_bias = m.attn_bias = m.mlp_bias = bias


ARCHS = {"": None, "nanogpt": True, "nanogpt_nobias": False}


def get_config(arg: str = ""):
    args = parse_arg(
        arg, size="small", runlocal=False, steps=0, tokenizer="", vocab=0, target="", arch=""
    )
    if args.arch not in ARCHS:
        raise ValueError(f"arch={args.arch}: choose one of {[a for a in ARCHS if a]} or leave out")
    config = base_config(args.size)
    accelerator = args.size not in PRESETS
    if args.target and not accelerator:
        raise ValueError(f"target={args.target}: size={args.size} is a CPU preset")
    if accelerator:
        set_tokenizer(config, args.tokenizer or "bpe", args.vocab or 32768)
    else:
        set_tokenizer(config, args.tokenizer or "byte", args.vocab or 4096)
    steps, lr, warmup, grad_accum = PRESETS.get(args.size, (10_000, 1e-3, 500, 1))
    set_schedule(config, args.steps or steps, lr, warmup)
    config.train.grad_accum = grad_accum
    if not accelerator:  # measured on the 2-core CPU: the reference step 1-7% faster
        config.model.causal_blocks = 4
    if accelerator:
        config.data.batch_size, config.data.seq_len = 256, 2048
        set_accelerator(config, ACCELERATOR[args.size], args.target)
    if args.runlocal:
        set_runlocal(config)
        config.data.seq_len = 128
    if args.arch:
        set_nanogpt(config, ARCHS[args.arch])
    return config
