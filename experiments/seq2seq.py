r"""Task fine-tuning of the encoder-decoder: name a function from its docstring and body.

A T5-style model (experiments/t5.py, v1.1) pre-trained with span corruption, then fine-tuned on
data/naming.py's task (the name of a stdlib function from its source with the name replaced by
`_`; docs/tasks.md); `scratch` trains the same model from random weights. All phases as one study
(studies/finetune.py: held-out loss and greedy-decoding exact match of `decode` held-out
examples, in `<workdir>/report.md`), or one phase at a time (`phase=pretrain|finetune|scratch`):

  python launch/run.py --config experiments/seq2seq.py:scratch=False --workdir runs/seq2seq
  python launch/run.py --config experiments/seq2seq.py:phase=finetune,base=runs/seq2seq/pretrain \
      --workdir runs/seq2seq/finetune

Arguments: phase (default study), base, size (tiny: 2 + 2 layers x 128), steps (fine-tuning),
pre_steps, seq_len (fine-tuning input tokens), lr, scratch (the study trains the scratch control),
decode (held-out examples the study decodes), runlocal.
"""

from experiments import t5
from experiments.common import task_experiment
from studies import finetune


def set_task(config, args) -> None:
    """The pre-training config turned into the naming task's."""
    config.objective = "seq2seq"
    config.data.task.name = "naming"
    config.data.seq_len = args.seq_len  # relative positions: any input length loads
    config.data.batch_size = 16


get_config, get_stages = task_experiment(
    t5.get_config, set_task, steps=200, pre_steps=300, seq_len=128, lr=2e-3, decode=512
)
report = finetune.report
