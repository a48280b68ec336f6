"""Compression: quantization, pruning, low-rank factors and structured pruning of trained models
(compress/methods.py, measured by compress/measure.py, run as the studies of compress/study.py),
and the two that also train, composed into any run of the one loop by `recipe`:

  quant.weight_bits, quant.act_bits   quantization-aware training: fake-quantized matmul weights
                                      (per output channel) and dense-matmul inputs (per row), with
                                      straight-through gradients (compress/quant.py); 0 = off
  prune.sparsity, .start, .end,       magnitude pruning during training: masks in the optimizer
  .every, .scope                      state, a cubic ramp from `start` to `end` (-1: 75% of the
                                      steps) every `every` steps (compress/masked.py); 0 = off

Both blocks are declared here with their types and ranges and checked when the recipe is composed.
A fine-tune after compression is such a run: `init_from` the trained checkpoint with
`prune.start = prune.end = 0` (masks of the loaded weights, applied before step 1 and held) or with
the deployment's quantization bits.
"""

import ml_collections

from compress.magnitude import SCOPES
from train.recipe import Recipe
from train.validate import check_fields

QUANT_BITS = (0, 2, 3, 4, 5, 6, 7, 8)  # 0 = off; int8 storage holds 2..8 bits

QUANT_FIELDS = {"weight_bits": {"choices": QUANT_BITS}, "act_bits": {"choices": QUANT_BITS}}
PRUNE_FIELDS = {
    "sparsity": {"type": float, "min": 0.0, "below": 1.0},
    "start": {"type": int, "min": 0},
    "end": {"type": int, "min": -1},
    "every": {"type": int, "min": 1},
    "scope": {"choices": SCOPES},
}


def default_quant_config() -> ml_collections.ConfigDict:
    """The `quant` block: bits of the fake-quantized weights and activations (0 = off)."""
    return ml_collections.ConfigDict({"weight_bits": 0, "act_bits": 0})


def default_prune_config() -> ml_collections.ConfigDict:
    """The `prune` block: final sparsity of the layers' matmul weights (0 = off) and its ramp."""
    return ml_collections.ConfigDict(
        {"sparsity": 0.0, "start": 0, "end": -1, "every": 50, "scope": "global"}
    )


def prune_end(config) -> int:
    """The step the pruning ramp ends (`prune.end`, -1: 75% of `train.steps`)."""
    end = config.prune.end
    return end if end >= 0 else int(0.75 * config.train.steps)


def recipe(config) -> Recipe | None:
    """QAT's fake-quantizing apply, and the pruning masks' optimizer with the step-0 masks applied
    to the initial weights (train/recipe.py); None when neither block is on."""
    from compress.magnitude import prunable_spec
    from compress.masked import masked, prune_initial
    from compress.quant import wrap_apply

    quant, p = config.get("quant"), config.get("prune")
    if quant is not None:
        check_fields(quant, QUANT_FIELDS, "quant.")
    if p is not None:
        check_fields(p, PRUNE_FIELDS, "prune.")
        if prune_end(config) < p.start:
            raise ValueError(f"prune.end={p.end} is before prune.start={p.start}; raise prune.end")
    qat = quant is not None and (quant.weight_bits or quant.act_bits)
    pruning = p is not None and p.sparsity > 0
    if not (qat or pruning):
        return None

    def apply(run, fn):
        return wrap_apply(run.model, config.model, quant.weight_bits, quant.act_bits, fn)

    def optimizer(run, opt):
        prunable, end = prunable_spec(run.model, config.model), prune_end(config)
        return masked(
            opt, prunable, p.sparsity, start=p.start, end=end, every=p.every, scope=p.scope
        )

    return Recipe(
        name="compress",
        apply=apply if qat else None,
        optimizer=optimizer if pruning else None,
        init=(lambda run, state: prune_initial(run, state, config)) if pruning else None,
    )
