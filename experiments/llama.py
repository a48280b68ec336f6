r"""Llama-style decoders (Llama 3 8B and 70B, Llama 3.2 1B), each planned for TPU and GPU targets.

  python launch/aot.py --config experiments/llama.py:size=8b --topology v5p-64
  python launch/aot.py --config experiments/llama.py:size=70b,target=64xh100 --topology 64xh100

Arguments (comma-separated): size=1b|8b|70b, target=SLICE (one of the size's planned targets in
`PLANS`, e.g. 8xh100; any other slice takes the size's first plan with that chip's peak FLOP/s),
steps=N, runlocal.

The architecture is Llama 3's: pre-norm RMSNorm (eps 1e-5), no biases, SwiGLU MLP, rotary
positions with theta 500,000, grouped-query attention with 8 key/value heads, untied output
layer (tied in the 1B); shapes in models/sizes.py (Llama 3 paper Table 3; Llama 3.2 1B's
config.json). Vocabulary: 128,256 ids (here a SentencePiece BPE of that size trained on the
corpus; only the table size matters for `launch/aot.py`). Sequences of 8,192 tokens, attention
dense (and its [T, S] logits in f32: the presets fit without bf16 logits, see docs/presets.md).

Optimisation: AdamW (b1 0.9, b2 0.95), weight decay 0.1, clip 1.0, the Llama 3 peak LRs (8B
3e-4, 70B 1.5e-4; 1B: ours, 3e-4, it was distilled rather than trained from scratch), linear
warmup of 8,000 steps, cosine to 10% over 15T tokens (1B: 9T). Global batch 512 x 8,192 = 4.2M
tokens for 8B and 70B (Llama 3 started its 405B at 4M tokens), 128 x 8,192 = 1M for 1B; the
plans split it into `grad_accum` microbatches of one row per data-parallel group.
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

CONTEXT = 8192
VOCAB = 128256

# size: (models/sizes.py row, peak LR, batch rows of CONTEXT tokens, training tokens, tied)
LLAMA = {
    "1b": ("llama3.2-1b", 3e-4, 128, 9e12, True),
    "8b": ("llama3-8b", 3e-4, 512, 15e12, False),
    "70b": ("llama3-70b", 1.5e-4, 512, 15e12, False),
}

# size: {target: plan}, the first the default. TPU v5p and H100 (8 per node, NVLink inside):
# FSDP over the slice; 70B adds 8-way tensor parallelism (inside a node on GPUs), which also
# splits the 64 heads' [T, S] attention logits 8 ways. Each microbatch is one row per
# data-parallel group (data x fsdp).
PLANS = {
    "1b": {"v5p-32": Plan("v5p-32", grad_accum=8)},
    "8b": {
        # 2-way data x 16-way FSDP: the fastest roofline step of the mesh search on v5p-64
        # (docs/presets_search_llama8b.txt: 22.3 s against 23.7 s for FSDP 32).
        "v5p-64": Plan("v5p-64", mesh={"data": 2}, grad_accum=16),
        "8xh100": Plan("8xh100", grad_accum=64),
    },
    "70b": {
        "v5p-512": Plan("v5p-512", mesh={"tensor": 8}, grad_accum=16),
        "64xh100": Plan("64xh100", mesh={"tensor": 8}, grad_accum=64),
    },
}


def presets() -> list[tuple[str, str]]:
    """Every (size, planned target) as (config argument, slice); the default target unnamed."""
    return [
        (f"size={size}" + (f",target={target}" if i else ""), target)
        for size, plans in PLANS.items()
        for i, target in enumerate(plans)
    ]


def llama_model(model, tied: bool) -> None:
    """Sets Llama 3's architecture switches on a model config."""
    model.family = "decoder"
    model.positions = "rotary"
    model.rope_theta = 500_000.0
    model.activation = "swiglu"
    model.norm_type = "rmsnorm"
    model.norm_position = "pre"
    model.norm_eps = 1e-5
    model.attn_bias = False
    model.mlp_bias = False
    model.tie_embeddings = tied
    model.max_len = CONTEXT
    model.init_std = 0.02


def plan_for(size: str, target: str = "") -> Plan:
    """The size's plan for `target` ('' = its first; an unplanned slice reuses the first)."""
    plans = PLANS[size]
    return plans.get(target) or next(iter(plans.values()))


def get_config(arg: str = ""):
    args = parse_arg(arg, {"size": LLAMA}, size="8b", target="", steps=0, runlocal=False)
    shape, lr, rows, tokens, tied = LLAMA[args.size]
    config = base_config(shape)
    llama_model(config.model, tied)
    set_tokenizer(config, "bpe", VOCAB)
    config.data.seq_len, config.data.batch_size = CONTEXT, rows
    set_schedule(config, args.steps or round(tokens / (rows * CONTEXT)), lr, 8000)
    set_accelerator(config, plan_for(args.size, args.target), args.target)
    if args.runlocal:
        set_runlocal(config)
        config.data.seq_len = 128
    return config
