r"""Compress one trained checkpoint and measure what it buys (a study: compress/study.py).

  python launch/run.py --config experiments/compress_ckpt.py:source=runs/small,method=int8 \
      --workdir runs/small_int8
  ...:source=runs/small,method=int4,qat,finetune_steps=100        # QAT, then int4
  ...:source=runs/small,method=w4a8,bits=3,act_bits=4,qat,finetune_steps=40
  ...:source=runs/small,method=prune,sparsity=0.5,finetune_steps=50   # masks held
  ...:source=runs/small,method=structured,keep_heads=3,keep_ff=768,finetune_steps=20
  ...:source=runs/small,method=lowrank,energy=0.9

Methods and options: compress/methods.py. A fine-tune (`finetune_steps` > 0) is a run of the one
loop from the source's checkpoint (stage `finetune`: QAT at the deployment bits with `qat`, the
pruning masks held with `prune`, the smaller model after `structured`); the `compress` stage
(`tuned` after structured pruning) holds the compressed checkpoint (`config.json`, Orbax
`params/`, read back by compress/measure.py `load_compressed`) and its report line in
results.jsonl: held-out loss and bits/byte against the source's, checkpoint bytes against the f32
tree written the same way, parameters (non-zero too) and training FLOPs per token. Cost: the
source's evaluation twice, plus the fine-tune (seconds for `size=small` on a CPU).
"""

from compress import study
from experiments.common import parse_arg


def get_config(arg: str | None = None):
    a = parse_arg(
        arg, source="", method="int8", finetune_steps=0, finetune_lr=3e-4, eval_batches=-1,
        sparsity=0.5, scope="global", keep_heads=0, keep_ff=0, importance="taylor", rank=0,
        energy=0.0, targets="q,k,v,o,wi,wo", bits=0, act_bits=-1, qat=False,
    )  # fmt: skip
    return study.study_config(source=a.source, method=a.method, eval_batches=a.eval_batches,
                              finetune={"steps": a.finetune_steps, "lr": a.finetune_lr},
                              options={k: a[k] for k in study.OPTION_FIELDS})  # fmt: skip


get_stages = study.compress_stages
report = study.compress_report
