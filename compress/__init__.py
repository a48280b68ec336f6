"""Compression: quantization, pruning, low-rank factors and structured pruning of trained models
(`methods.compress`), and the two that also train: quantization-aware training
(`model.weight_bits`) and pruning during training (`train.prune_sparsity`), composed into a run by
`recipe`."""

from train.recipe import Recipe


def recipe(config) -> Recipe | None:
    """QAT's fake-quantized apply and the pruning masks' optimizer (train/recipe.py), or None."""
    from compress.masked import maybe_masked
    from compress.quant import wrap_apply

    qat = bool(config.model.get("weight_bits", 0))
    prune = bool(config.train.get("prune_sparsity", 0.0))
    if not (qat or prune):
        return None
    return Recipe(
        name="compress",
        apply=(lambda run, fn: wrap_apply(run.model, config.model, fn)) if qat else None,
        optimizer=(
            (lambda run, opt: maybe_masked(opt, config.train, run.model, config.model))
            if prune
            else None
        ),
    )
