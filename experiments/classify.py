r"""Sequence classification with the encoder: which top-level stdlib package a snippet is from.

A BERT-style encoder (experiments/bert.py) pre-trained with masked LM, then fine-tuned with the
classification head on data/labels.py's task (the `classes` packages with the most files;
docs/tasks.md); `scratch` trains the same model from random weights, the control. All phases as
one study (studies/finetune.py; the table is `<workdir>/report.md`), or one phase at a time
(`phase=pretrain|finetune|scratch`, `base=` the pre-training workdir):

  python launch/run.py --config experiments/classify.py --workdir runs/classify     # ~10 min
  python launch/run.py --config experiments/classify.py:phase=finetune,base=runs/classify/pretrain \
      --workdir runs/classify/finetune

Arguments: phase (default study), base, size (tiny: 2 x 128), steps (fine-tuning), pre_steps,
classes, lr, scratch (the study trains the scratch control), runlocal.
"""

from experiments import bert
from experiments.common import task_experiment
from studies import finetune


def set_task(config, args) -> None:
    """The pre-training config turned into the classification task's."""
    config.objective = "classification"
    config.data.task.name = "packages"
    config.data.task.num_classes = args.classes
    config.model.num_classes = args.classes
    config.data.batch_size = 32


get_config, get_stages = task_experiment(
    bert.get_config, set_task, steps=150, pre_steps=400, classes=8, lr=1e-3
)
report = finetune.report
