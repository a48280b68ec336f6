r"""Knowledge distillation: a student trained on N tokens with a teacher vs. without one.

  # the teacher: any finished run with the same tokenizer, e.g. a size=small GPT
  python launch/run.py --config experiments/gpt.py:size=small,steps=300 --workdir runs/small300
  # the student with the teacher (alpha 0.5, tau 2), then the control (alpha=0: plain CE)
  python launch/run.py --config experiments/distill.py:teacher=runs/small300 --workdir runs/kd
  python launch/run.py --config experiments/distill.py:teacher=runs/small300,alpha=0 \
      --workdir runs/kd_ce

Arguments: teacher=DIR (run directory), size=tiny (student), steps=N (student steps, 16 x 256
tokens each; default 300 = 1.2M tokens), alpha (weight of the KL term), tau (temperature),
tokenizer (must be the teacher's). Both runs see the same batches in the same order (same seed),
so the held-out losses in their summary.json compare the teacher's effect alone. The loss is
alpha * tau^2 * KL(teacher || student) + (1 - alpha) * CE (distill/loss.py); the student is an
ordinary run of the one training loop (distill/recipe.py adds the loss and the teacher's
parameters as a frozen step input), so it resumes bitwise after preemption or a kill (rerun the
same command), follows `train.nan_policy` and reads multi-host data; the teacher is reloaded from
its directory, never checkpointed. A distilled step costs a teacher forward pass more than the
control's. Results: docs/compression.md#distillation.
"""

from distill.recipe import default_distill_config
from experiments.common import parse_arg
from experiments.gpt import get_config as gpt_config


def get_config(arg: str = ""):
    args = parse_arg(
        arg, teacher="", size="tiny", steps=300, alpha=0.5, tau=2.0, tokenizer="byte", vocab=4096
    )
    if args.alpha > 0 and not args.teacher:
        raise ValueError("experiments/distill.py needs teacher=RUN_DIR (alpha=0: the control)")
    config = gpt_config(
        f"size={args.size},steps={args.steps},tokenizer={args.tokenizer},vocab={args.vocab}"
    )
    config.objective = "causal_lm"
    config.distill = default_distill_config()
    config.distill.update(teacher=args.teacher, alpha=args.alpha, temperature=args.tau)
    return config
