r"""Encoder-decoder span corruption (T5) on the embedded stdlib corpus, byte-level by default.

  python launch/run.py --config experiments/t5.py:size=tiny --workdir /tmp/t5_tiny

Arguments (comma-separated): size=tiny|mini|small|..., version=1.0|1.1, runlocal, steps=N,
tokenizer=byte|bpe|unigram|PATH.model, vocab=N.

The architecture is T5's: pre-norm RMSNorm without bias (eps 1e-6), no biases anywhere, no
1/sqrt(head dim) scaling of attention logits, relative-position bias (32 buckets, max distance
128) shared across the layers of each stack, bidirectional in the encoder and causal in the
decoder; v1.0 has a ReLU MLP and tied embeddings rescaled by d_model**-0.5, v1.1 a gated-GELU MLP
and an untied output layer. Objective: span corruption with noise density 0.15 and mean span 3
(objectives/span_corruption.py); encoder rows of 128 tokens, decoder rows of `target_len`.
Reported loss is nats per target token (sentinels and EOS included).

Presets (2-core CPU, shared with other jobs): size=tiny is 300 steps of 16 x 128 input tokens.
"""

from experiments.common import base_config, parse_arg, set_runlocal, set_schedule, set_tokenizer
from experiments.families import set_family, t5_model

# size: (steps, peak lr, warmup)
PRESETS = {"tiny": (300, 3e-3, 30), "mini": (1000, 2e-3, 100), "small": (1800, 1e-3, 150)}


def get_config(arg: str = ""):
    args = parse_arg(
        arg, size="small", version="1.1", runlocal=False, steps=0, tokenizer="byte", vocab=4096
    )
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
