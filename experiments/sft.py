r"""Supervised fine-tuning (instruction tuning) of a pre-trained byte-level GPT on the embedded
instruction set: docstring -> source pairs of the stdlib (data/instructions.py), loss on the
response tokens only, packed, through the project's train loop (`data.source='instructions'`).

  python launch/run.py --config experiments/gpt.py:size=tiny --workdir runs/sft_base
  python launch/run.py --config experiments/sft.py:base=runs/sft_base --workdir runs/sft

Arguments: base (the pre-training workdir, loaded with `init_from`; empty trains from scratch),
size (must match the base run; default tiny), steps, lr. Pairs longer than `data.seq_len` (256)
are left out; the validation pairs (crc32 of 'path:name' % 100 < 5) are the held-out loss.
Cost: 300 steps of 16 x 256 tokens on the tiny model, about 2 minutes on a loaded 2-core CPU.
experiments/dpo.py runs this stage inside its pre-train -> SFT -> DPO study.
"""

from experiments.common import base_config, parse_arg, set_schedule


def get_config(arg: str = ""):
    args = parse_arg(arg, base="", size="tiny", steps=300, lr=1e-3, runlocal=False)
    config = base_config(args.size)
    config.data.source = "instructions"
    config.data.seq_len = 256
    config.data.batch_size = 16
    set_schedule(config, args.steps, args.lr, warmup=30)
    config.train.grad_accum = 4  # the CPU presets' microbatching (experiments/gpt.py)
    config.train.eval_batches = 8
    config.init_from = args.base
    if args.runlocal:
        config.train.steps, config.train.eval_every, config.train.ckpt_every = 6, 3, 3
        config.train.warmup_steps, config.train.eval_batches = 1, 1
        config.data.batch_size, config.train.grad_accum = 8, 1
    return config
