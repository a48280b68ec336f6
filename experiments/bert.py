r"""Encoder-only masked LM (BERT) on the embedded stdlib corpus, byte-level by default.

  python launch/run.py --config experiments/bert.py:size=tiny --workdir /tmp/bert_tiny

Arguments (comma-separated): size=tiny|mini|small|..., runlocal (a few steps), steps=N, nsp
(sentence pairs + next-sentence prediction head), tokenizer=byte|bpe|unigram|PATH.model, vocab=N.

The architecture is BERT's: post-LN, LayerNorm (eps 1e-12) after the embeddings, learned absolute
positions, biases everywhere, exact GELU, tied embeddings with an output bias, token-type
embeddings (2 types). Objective: 15% of tokens chosen, 80/10/10 mask/random/unchanged
(objectives/masked_lm.py). Reported loss is nats per *chosen* token, and bits per byte of the
chosen tokens' text, so it is not comparable to a causal LM's.

Presets (2-core CPU, shared with other jobs): size=tiny is 300 steps of 16 x 128 tokens.
"""

from experiments.common import base_config, parse_arg, set_runlocal, set_schedule, set_tokenizer
from experiments.families import set_family

# size: (steps, peak lr, warmup)
PRESETS = {"tiny": (300, 1e-3, 30), "mini": (1000, 1e-3, 100), "small": (1800, 7e-4, 150)}


def get_config(arg: str = ""):
    args = parse_arg(
        arg, size="small", runlocal=False, steps=0, nsp=False, tokenizer="byte", vocab=4096
    )
    config = base_config(args.size)
    set_tokenizer(config, args.tokenizer, args.vocab)
    config.data.seq_len = 128
    set_family(config, "encoder")
    config.objective_args.nsp = args.nsp
    config.model.nsp_head = args.nsp
    steps, lr, warmup = PRESETS.get(args.size, (10_000, 1e-4, 1000))
    set_schedule(config, args.steps or steps, lr, warmup)
    if args.runlocal:
        set_runlocal(config)
    return config
