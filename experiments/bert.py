r"""Encoder-only masked LM (BERT) on the embedded stdlib corpus, byte-level by default.

  python launch/run.py --config experiments/bert.py:size=tiny --workdir /tmp/bert_tiny
  python launch/aot.py --config experiments/bert.py:size=bert-large --topology v5litepod-16

Arguments (comma-separated): size=tiny|mini|small|...|bert-large, runlocal (a few steps), steps=N,
nsp (sentence pairs + next-sentence prediction head), tokenizer=byte|bpe|unigram|PATH.model,
vocab=N, target=SLICE (bert-large: plan for another slice).

The architecture is BERT's: post-LN, LayerNorm (eps 1e-12) after the embeddings, learned absolute
positions, biases everywhere, exact GELU, tied embeddings with an output bias, token-type
embeddings (2 types). Objective: 15% of tokens chosen, 80/10/10 mask/random/unchanged
(objectives/masked_lm.py). Reported loss is nats per *chosen* token, and bits per byte of the
chosen tokens' text, so it is not comparable to a causal LM's.

Presets (2-core CPU, shared with other jobs): size=tiny is 300 steps of 16 x 128 tokens.

size=bert-large is BERT-large (Devlin et al. 2019: 24 layers, 1024 wide, 16 heads, 4096 MLP,
335M parameters here), an accelerator preset planned in `PUBLISHED`: 256 rows of 512 tokens,
a 30,522-id vocabulary (BERT's WordPiece size; here a SentencePiece BPE) in a 30,592-row table,
1M steps at 1e-4 after 10,000 warmup steps (the paper ran 90% of them at 128 tokens).
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
from experiments.families import set_family

# size: (steps, peak lr, warmup)
PRESETS = {"tiny": (300, 1e-3, 30), "mini": (1000, 1e-3, 100), "small": (1800, 7e-4, 150)}

# Published sizes: the slice each is planned for and its split.
PUBLISHED = {"bert-large": Plan("v5litepod-16")}


def presets() -> list[tuple[str, str]]:
    """The accelerator sizes (BERT-large) as (config argument, planned slice)."""
    return [(f"size={size}", plan.target) for size, plan in PUBLISHED.items()]


def get_config(arg: str = ""):
    args = parse_arg(
        arg,
        size="small",
        runlocal=False,
        steps=0,
        nsp=False,
        tokenizer="byte",
        vocab=4096,
        target="",
    )
    published = args.size in PUBLISHED
    if args.target and not published:
        raise ValueError(f"target={args.target}: only size=bert-large is an accelerator preset")
    config = base_config(args.size)
    if published:
        set_tokenizer(config, "bpe", 30522)
        config.data.seq_len, config.data.batch_size = 512, 256
    else:
        set_tokenizer(config, args.tokenizer, args.vocab)
        config.data.seq_len = 128
    set_family(config, "encoder")
    config.objective_args.nsp = args.nsp
    config.model.nsp_head = args.nsp
    steps, lr, warmup = PRESETS.get(args.size, (10_000, 1e-4, 1000))
    if published:
        steps, lr, warmup = 1_000_000, 1e-4, 10_000
        set_accelerator(config, PUBLISHED[args.size], args.target)
    set_schedule(config, args.steps or steps, lr, warmup)
    if args.runlocal:
        set_runlocal(config)
    return config
