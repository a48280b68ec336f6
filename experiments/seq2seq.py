r"""Task fine-tuning of the encoder-decoder: name a function from its docstring and body.

A T5-style model (experiments/t5.py, v1.1) is pre-trained with span corruption on the corpus, then
fine-tuned on data/naming.py's task (input: a stdlib function's docstring and source with the name
in its `def` line replaced by `_`; target: the name; files split 80/20 by a hash of their path,
the stdlib's own test suites left out), cross-entropy on every target token. `scratch` trains the
same model on the task from random weights. launch/finetune.py runs the phases and reports
held-out loss before and after fine-tuning and the exact match of greedy decoding
(models/generate.py) beside the majority-name baseline:

  python launch/finetune.py --task=seq2seq --workdir runs/seq2seq     # ~15 min, 2-core CPU

or one phase at a time (`phase=pretrain|finetune|scratch`, `base=` the pre-training workdir):

  python launch/run.py --config experiments/seq2seq.py:phase=pretrain \
      --workdir runs/seq2seq/pretrain
  python launch/run.py --config experiments/seq2seq.py:phase=finetune,base=runs/seq2seq/pretrain \
      --workdir runs/seq2seq/finetune

Arguments: phase, base, size (tiny: 2 + 2 layers x 128), steps (fine-tuning), pre_steps, seq_len
(fine-tuning input tokens), lr, runlocal.
"""

from experiments import t5
from experiments.common import parse_arg, task_phase


def get_config(arg: str = ""):
    args = parse_arg(
        arg,
        phase="pretrain",
        base="",
        size="tiny",
        steps=200,
        pre_steps=300,
        seq_len=128,
        lr=2e-3,
        runlocal=False,
    )
    pretrain = t5.get_config(f"size={args.size},steps={args.pre_steps}")

    def set_task(config):
        config.objective = "seq2seq"
        config.data.task.name = "naming"
        config.data.seq_len = args.seq_len  # relative positions: any input length loads
        config.data.batch_size = 16

    return task_phase(pretrain, args, set_task)
