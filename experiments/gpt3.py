r"""The GPT-3 ladder (Brown et al. 2020, Table 2.1), each size planned for a TPU slice.

  python launch/aot.py --config experiments/gpt3.py:size=1.3b --topology v5p-32
  python launch/run.py --config experiments/gpt3.py:size=125m --workdir runs/gpt3_125m

Arguments (comma-separated): size=125m|350m|760m|1.3b|2.7b|6.7b|13b|175b, target=SLICE (plan for
another slice: peak FLOP/s from its chip, the size's own mesh and microbatches), steps=N, runlocal.

The architecture is GPT-2's as GPT-3 used it: pre-LN LayerNorm (eps 1e-5) with biases, biases on
every matmul, GELU (tanh approximation), learned positions over a 2048-token context, tied
embeddings; d_ff = 4 d_model; shapes in models/sizes.py (two rows of the table are corrected
there). Vocabulary: GPT-2's 50,257 BPE ids padded to 50,304 (here a 50,257-id SentencePiece BPE
trained on the corpus; only the table size matters for `launch/aot.py`). The sparse alternating
layers of GPT-3 exist (`model.sparse.pattern`, `model.sparse.layers='alternate'`) but stay
off: dense attention everywhere.

Optimisation as Table 2.1 and appendix B: AdamW (b1 0.9, b2 0.95, eps 1e-8), weight decay 0.1,
global-norm clip 1.0, the table's batch (tokens, as rows of 2048) and peak LR, linear warmup
over 375M tokens, cosine to 10% of the peak; here over all 300B tokens (GPT-3 reached 10% at
260B tokens and held it) and without GPT-3's batch-size ramp over the first 4-12B tokens.

`PLANS` names each size's slice and split (experiments/common.Plan); docs/presets.md has every
one compiled for its slice (memory per chip, roofline step time, MFU).
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

CONTEXT = 2048
TOKENS = 300e9  # training tokens of every GPT-3 model
WARMUP_TOKENS = 375e6

# size: (peak LR, batch in rows of 2048 tokens) from Table 2.1 (0.5M tokens = 256 rows, ...,
# 3.2M = 1536 rows: the table rounds 1536 x 2048 = 3.15M).
GPT3 = {
    "125m": (6.0e-4, 256),
    "350m": (3.0e-4, 256),
    "760m": (2.5e-4, 256),
    "1.3b": (2.0e-4, 512),
    "2.7b": (1.6e-4, 512),
    "6.7b": (1.2e-4, 1024),
    "13b": (1.0e-4, 1024),
    "175b": (0.6e-4, 1536),
}

# size: the slice it is planned for and how it is split there (FSDP over the slice unless said).
PLANS = {
    "125m": Plan("v5litepod-16", grad_accum=2),
    "350m": Plan("v5litepod-32"),
    "760m": Plan("v5litepod-64"),
    "1.3b": Plan("v5p-32"),
    "2.7b": Plan("v5p-64"),
    "6.7b": Plan("v5p-128"),
    "13b": Plan("v5p-256"),
    "175b": Plan("v5p-1024"),
}


def presets() -> list[tuple[str, str]]:
    """Every size as (config argument, planned slice)."""
    return [(f"size={size}", plan.target) for size, plan in PLANS.items()]


def gpt3_model(model) -> None:
    """Sets GPT-3's (GPT-2's) architecture switches on a model config."""
    model.family = "decoder"
    model.positions = "learned"
    model.max_len = CONTEXT
    model.activation = "gelu"
    model.norm_type = "layernorm"
    model.norm_position = "pre"
    model.norm_eps = 1e-5
    model.norm_bias = True
    model.attn_bias = True
    model.mlp_bias = True
    model.tie_embeddings = True
    model.init_std = 0.02


def get_config(arg: str = ""):
    args = parse_arg(arg, {"size": GPT3}, size="125m", target="", steps=0, runlocal=False)
    lr, rows = GPT3[args.size]
    config = base_config(f"gpt3-{args.size}")
    gpt3_model(config.model)
    set_tokenizer(config, "bpe", 50257)
    config.data.seq_len, config.data.batch_size = CONTEXT, rows
    tokens = rows * CONTEXT
    set_schedule(config, args.steps or round(TOKENS / tokens), lr, round(WARMUP_TOKENS / tokens))
    plan = PLANS[args.size]
    set_accelerator(config, plan, args.target)
    if args.runlocal:
        set_runlocal(config)
        config.data.seq_len = 128
    return config
