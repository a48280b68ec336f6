"""Which reward-model checkpoint the later stages read: the evaluated step with the highest
validation pairwise accuracy (prefs/reward_recipe.py), so a critic that overfits its training
pairs is read from before it did. Its run keeps a checkpoint at every evaluation
(experiments/rlhf.py)."""

from common import atomic
from train.checkpoint import load_params
from train.metrics import read_metrics
from train.validate import ConfigError


def best_step(rows: list[dict]) -> int | None:
    """The step of the metrics `rows` with the highest `eval/accuracy` (ties: the lower
    `eval/loss`, then the earlier step); None if no row has one."""
    evals = [r for r in rows if "eval/accuracy" in r]
    if not evals:
        return None
    return min(evals, key=lambda r: (-r["eval/accuracy"], r["eval/loss"], r["step"]))["step"]


def critic_step(workdir: str) -> int | None:
    """`best_step` of the run in `workdir` (None, the newest checkpoint, if it logged no
    evaluation: a run made outside the loop); ConfigError if that step's checkpoint is gone."""
    path = f"{workdir}/metrics.jsonl"
    step = best_step(read_metrics(path)) if atomic.exists(path) else None
    if step is not None and not atomic.isdir(f"{workdir}/checkpoints/{step}"):
        raise ConfigError(
            f"{workdir} kept no checkpoint of its best validation step {step}; train it with "
            "train.ckpt_every equal to train.eval_every and train.keep_ckpts above the evaluations"
        )
    return step


def critic_params(workdir: str):
    """The reward model's parameters at `critic_step` (host arrays)."""
    return load_params(workdir, critic_step(workdir))
