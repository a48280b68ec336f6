"""What an experiment adds to the core run, composed outside it: wrappers, a loss, inputs, data.

The core (`train.loop.Run`, `train.step`, `train.loop.train_and_evaluate`) trains one model on one
objective with resume, preemption, the NaN policy, multi-host data and asynchronous metrics. Every
other capability is a `Recipe` of hooks, each `None` when the capability does not touch that part:

| hook       | called as                                 | used by                           |
| ---------- | ----------------------------------------- | --------------------------------- |
| model      | `model(run, model) -> model`              | LoRA, prompt tuning, freezing     |
| optimizer  | `optimizer(run, opt) -> opt`              | freezing, pruning masks           |
| apply      | `apply(run, apply_fn) -> apply_fn`        | quantization-aware training       |
| loss       | `loss(run, apply_fn) -> loss_fn`          | distillation, DPO                 |
| frozen     | `frozen(run) -> tree of global arrays`    | a teacher's parameters            |
| data       | `data(run, index, count) -> (it, evals)`  | preference pairs                  |
| batch_keys | `batch_keys(run) -> {key: rank}`          | a data source with other keys     |
| init       | `init(run, state) -> state`               | `init_from` (pre-trained weights) |
| probe      | `probe(run, params) -> {name: float}`     | RL: sample and judge held out     |

`data` returns this process's checkpointable train iterator (its block `index` of `count` row
blocks) and its list of held-out batches. An iterator with a `see(state)` method is shown the
current train state before each `next` (an on-policy source: RL rollouts sampled from the current
parameters); it must not keep the state past that `next` (the step donates it). `probe` adds
held-out figures that are not a loss (sampled and judged) to every evaluation, as `eval/<name>`.

A `loss` hook's function is `loss_fn(params, batch, rng, frozen) -> (loss, aux)`: `frozen` is the
`frozen` hook's tree, an argument of the jitted step (sharded, never donated, never
differentiated, never checkpointed). `aux` holds sums: `nll_sum`, `tokens` and `bytes` give the
loss and bits/byte; every other key `<name>_sum` is logged as `train/<name>` (and `eval/<name>`)
divided by `tokens`. The held-out evaluation uses the objective's own loss unless `eval_loss` is
set (DPO evaluates its pair loss on held-out pairs).

A `Stage` is one step of a multi-stage study (studies/stages.py runs them): a run config that
the loop trains with its recipe, or an action (sampling, judging, compressing); features build
the stages of their studies, the runner executes them.

`compose(a, b, ...)` chains the wrappers in order (a's model wrapper runs first) and takes the
one `loss`, `frozen`, `data` and `batch_keys` hook that is set (two are a conflict).
"""

import dataclasses
import os
from collections.abc import Callable

_CHAINED = ("model", "optimizer", "apply", "init")
_SINGLE = ("loss", "frozen", "data", "batch_keys", "probe")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Hooks of one capability (see the module docstring); `name` is for error messages."""

    name: str = ""
    model: Callable | None = None
    optimizer: Callable | None = None
    apply: Callable | None = None
    loss: Callable | None = None
    eval_loss: bool = False
    frozen: Callable | None = None
    data: Callable | None = None
    batch_keys: Callable | None = None
    init: Callable | None = None
    probe: Callable | None = None


def _chain(hooks: list[Callable]) -> Callable | None:
    if not hooks:
        return None

    def chained(run, x):
        for hook in hooks:
            x = hook(run, x)
        return x

    return chained


def compose(*recipes: Recipe | None) -> Recipe:
    """One recipe doing what `recipes` do, in order (None entries are skipped).

    Raises:
      ValueError: two recipes set the same single hook (`loss`, `frozen`, `data`, `batch_keys`,
        `probe`).
    """
    recipes = tuple(r for r in recipes if r is not None)
    fields = {k: _chain([getattr(r, k) for r in recipes if getattr(r, k)]) for k in _CHAINED}
    for k in _SINGLE:
        owners = [r for r in recipes if getattr(r, k) is not None]
        if len(owners) > 1:
            names = ", ".join(r.name or "?" for r in owners)
            raise ValueError(f"{names} both set the run's {k}; use one of them per run")
        fields[k] = getattr(owners[0], k) if owners else None
    fields["eval_loss"] = any(r.eval_loss for r in recipes)
    fields["name"] = "+".join(r.name for r in recipes if r.name)
    return Recipe(**fields)


@dataclasses.dataclass
class Stage:
    """One step of a study: a run (`config`) or an `action` (exactly one of them)."""

    name: str
    config: object = None
    action: Callable[[str, dict[str, dict]], dict] | None = None
    recipe: Recipe | None = None  # None: `studies.recipes.recipe_for(config)`
    record_nonfinite: bool = False  # a non-finite stop is a 'diverged' row, not an error

    def __post_init__(self):
        if (self.config is None) == (self.action is None):
            raise ValueError(f"stage {self.name!r} needs exactly one of config and action")


def stage_dir(workdir: str, name: str) -> str:
    return os.path.join(workdir, name)
