r"""Decoder-only byte-level LM (GPT) on the embedded stdlib corpus.

  python launch/run.py --config experiments/gpt.py:size=tiny --workdir /tmp/gpt_tiny

Arguments (comma-separated): size=tiny|mini|small|medium|large|base|xl, runlocal (a few steps,
for a smoke test), steps=N (override the preset's step count), tokenizer=byte|bpe|unigram|PATH.model
and vocab=N (SentencePiece vocabulary size, trained on the corpus's train split on first use).

Presets and measured cost on a 2-core CPU (docs/training.md):
  size=tiny:  2 x 128,  600 steps of 16 x 256 tokens (2.5M tokens), about 2 minutes.
  size=small: 4 x 256, 1800 steps of 16 x 256 tokens (7.4M tokens), under 27 minutes.
Larger sizes default to 10,000 steps and are meant for accelerators.

The CPU presets run each batch of 16 rows as 4 microbatches of 4 (`train.grad_accum=4`): the
update is identical (tests/test_train_step.py), and on XLA:CPU the smaller working set is faster
(measured here: tiny 22.8k -> 30.0k tokens/s, small ~4.9k -> ~5.9k tokens/s).
"""

from experiments.common import base_config, parse_arg, set_runlocal, set_schedule, set_tokenizer

# size: (steps, peak lr, warmup, microbatches per step)
PRESETS = {
    "tiny": (600, 3e-3, 50, 4),
    "mini": (1500, 3e-3, 100, 4),
    "small": (1800, 2.5e-3, 100, 4),
}


def get_config(arg: str = ""):
    args = parse_arg(arg, size="small", runlocal=False, steps=0, tokenizer="byte", vocab=4096)
    config = base_config(args.size)
    set_tokenizer(config, args.tokenizer, args.vocab)
    steps, lr, warmup, grad_accum = PRESETS.get(args.size, (10_000, 1e-3, 500, 1))
    set_schedule(config, args.steps or steps, lr, warmup)
    config.train.grad_accum = grad_accum
    if args.runlocal:
        set_runlocal(config)
        config.data.seq_len = 128
    return config
