r"""Loss vs. sparsity of one trained model (a study: compress/study.py): magnitude pruning at each
sparsity one-shot and after a short fine-tune with the masks held (runs of the one loop), plus
structured pruning of heads and neurons on the same model.

  python launch/run.py --config experiments/prune_curve.py:source=runs/small,keep_heads=3,\
keep_ff=768 --config.finetune.steps=20 --config.finetune_at=0,0.5,0.7,0.9 --workdir runs/small_prune

Writes results.jsonl (one row per stage: `prune_<pct>` one-shot, `finetune_<pct>` fine-tuned,
`structured`, `structured_finetune`), report.md (the table) and loss_vs_sparsity.png. The 0%
fine-tune is the dense model's same steps, the reference for the rest. Cost on a 2-core CPU for
`size=small`: a few seconds per one-shot point, the fine-tune's steps per tuned point.
"""

from compress import study
from experiments.common import parse_arg


def get_config(arg: str | None = None):
    a = parse_arg(arg, source="", scope="global", keep_heads=0, keep_ff=0, eval_batches=-1)
    return study.study_config(
        source=a.source,
        eval_batches=a.eval_batches,
        sparsities=tuple(s / 10 for s in range(10)),
        finetune_at=(),  # empty: every sparsity
        scope=a.scope,
        keep_heads=a.keep_heads,
        keep_ff=a.keep_ff,
        finetune={"steps": 30, "lr": 1e-3},
    )


get_stages = study.curve_stages
report = study.curve_report
