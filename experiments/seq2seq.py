r"""Task fine-tuning of the encoder-decoder: name a function from its docstring and body.

A T5-style model (experiments/t5.py, v1.1) is pre-trained with span corruption on the corpus, then
fine-tuned on data/naming.py's task (input: a stdlib function's docstring and source with the name
in its `def` line replaced by `_`; target: the name; files split 80/20 by a hash of their path,
the stdlib's own test suites left out), cross-entropy on every target token. `scratch` trains the
same model on the task from random weights. All phases as one study (studies/finetune.py): held-out
loss before and after fine-tuning and the exact match of greedy decoding (models/generate.py) of
`decode` held-out examples beside the majority-name baseline, in `<workdir>/report.md`:

  python launch/run.py --config experiments/seq2seq.py:scratch=False --workdir runs/seq2seq

or one phase at a time (`phase=pretrain|finetune|scratch`, `base=` the pre-training workdir):

  python launch/run.py --config experiments/seq2seq.py:phase=pretrain \
      --workdir runs/seq2seq/pretrain
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
