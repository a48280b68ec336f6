r"""Preference tuning (DPO) of an instruction-tuned byte-level GPT, pairs judged by `ast.parse`.

The policy and the frozen reference both start from the SFT run (experiments/sft.py). prefs/dpo.py
samples `samples` bodies for each of `prompts` train-split function headers, pairs a body that
parses with one that does not (same prompt), caches the reference log-probs, trains `steps` DPO
updates of `batch` pairs, then samples `heldout_samples` bodies for each of the first `heldout`
validation-split headers from the SFT and from the DPO model (same settings, same keys) and
reports the fraction that parse. Parse criterion: the header (decorators + `def` line(s)) followed
by the generated body, cut at the first non-blank line at column 0, at EOS, or (token budget
exhausted) at the last newline, must be accepted by `ast.parse`.

  python launch/dpo.py --workdir runs/dpo       # pre-train, SFT, DPO and the table in one go
  python launch/run.py --config experiments/dpo.py:sft=runs/dpo/sft --workdir runs/dpo/dpo

Arguments: sft (the SFT workdir), size (as the SFT run), beta, steps, lr, batch, prompts,
samples, heldout, heldout_samples, max_new (tokens per completion), max_prompt (longest prompt,
in tokens), temperature, top_k, top_p, gen_batch (rows per sampling call), seed, pairs (reuse
the pairs.json of an earlier run: same SFT run and sampling settings, other beta / lr / steps).
"""

import ml_collections

from experiments.common import base_config, parse_arg


def get_config(arg: str = ""):
    args = parse_arg(
        arg,
        sft="",
        size="tiny",
        beta=0.1,
        steps=100,
        lr=1e-4,
        batch=16,
        prompts=256,
        samples=8,
        heldout=128,
        heldout_samples=4,
        max_new=160,
        max_prompt=192,
        temperature=0.8,
        top_k=0,
        top_p=1.0,
        gen_batch=128,
        seed=0,
        pairs="",
    )
    config = base_config(args.size)
    config.data.source = "instructions"  # the prompts' pairs (and the data dir of their cache)
    config.data.seq_len = args.max_prompt + args.max_new + 1  # prompt + body + EOS
    config.data.batch_size = args.batch
    t = config.train
    t.steps, t.lr, t.warmup_steps = args.steps, args.lr, max(args.steps // 10, 1)
    t.schedule, t.weight_decay, t.log_every = "constant", 0.0, 10
    config.init_from = args.sft
    config.dpo = ml_collections.ConfigDict(
        {
            "beta": args.beta,
            "prompts": args.prompts,
            "samples": args.samples,
            "heldout_prompts": args.heldout,
            "heldout_samples": args.heldout_samples,
            "max_new_tokens": args.max_new,
            "max_prompt_tokens": args.max_prompt,
            "temperature": args.temperature,
            "top_k": args.top_k,
            "top_p": args.top_p,
            "gen_batch": args.gen_batch,
            "seed": args.seed,
            # pairs.json of an earlier run with the same SFT model, prompts and sampling settings
            # (its cached reference log-probs included): tune beta / lr / steps without resampling
            "pairs_from": args.pairs,
        }
    )
    return config
