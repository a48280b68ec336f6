"""Loss-function factories: `make_loss_fn(cfg, apply_fn, ...) -> loss_fn(params, batch, rng)`,
and the host-side batch transforms some objectives need (objectives/transforms.py).

| objective        | family  | transform                | loss counted on            |
| ---------------- | ------- | ------------------------ | -------------------------- |
| causal_lm        | decoder | none                     | every next token           |
| prefix_lm        | decoder | PrefixLMTransform        | tokens after the prefix    |
| masked_lm        | encoder | MaskedLMTransform (+NSP) | the 15% chosen tokens      |
| span_corruption  | encdec  | SpanCorruptionTransform  | every target token         |
| classification   | encoder | none (labelled data)     | one label per row          |
| seq2seq          | encdec  | none (labelled data)     | every target token         |

The last two train on `data.task` (data/tasks.py) instead of packed text.
"""

from collections.abc import Callable

import ml_collections
import numpy as np

FAMILIES = {
    "causal_lm": ("decoder",),
    "prefix_lm": ("decoder",),
    "masked_lm": ("encoder",),
    "span_corruption": ("encdec",),
    "classification": ("encoder",),
    "seq2seq": ("encdec",),
}


_FRACTION = {"type": float, "min": 0.0, "max": 1.0}


def _check_mask_split(args) -> None:
    if args.mask_frac + args.random_frac > 1:
        raise ValueError(
            f"objective_args.mask_frac + random_frac = {args.mask_frac} + {args.random_frac} "
            "exceeds 1; lower one of them"
        )


# Type, range and allowed values of every `objective_args` field (the keys: models/sizes.py
# MODEL_FIELDS).
OBJECTIVE_ARGS_FIELDS = {
    "mask_rate": {"type": float, "above": 0.0, "below": 1.0},
    "mask_frac": _FRACTION,
    "random_frac": {**_FRACTION, "check": _check_mask_split},
    "nsp": {"type": bool},
    "noise_density": {"type": float, "above": 0.0, "below": 1.0},
    "mean_span": {"type": float, "min": 1.0},
    "target_len": {"type": int, "min": 0},
}


def default_objective_args() -> ml_collections.ConfigDict:
    """The `objective_args` block of a run config (fields of the transforms)."""
    return ml_collections.ConfigDict(
        {
            "mask_rate": 0.15,  # masked_lm: fraction of tokens chosen
            "mask_frac": 0.8,  # masked_lm: chosen tokens replaced by the mask id
            "random_frac": 0.1,  # masked_lm: ... by a random token (the rest stay unchanged)
            "nsp": False,  # masked_lm: sentence pairs + next-sentence labels (model.nsp_head)
            "noise_density": 0.15,  # span_corruption: fraction of tokens noised
            "mean_span": 3.0,  # span_corruption: mean noise-span length
            "target_len": 0,  # span_corruption: decoder length (0: span_corruption.default)
        }
    )


def get_loss_fn(name: str) -> Callable:
    """The loss factory for `config.objective`."""
    from objectives import (
        causal_lm,
        classification,
        masked_lm,
        prefix_lm,
        seq2seq,
        span_corruption,
    )

    factories = {
        "causal_lm": causal_lm.make_loss_fn,
        "prefix_lm": prefix_lm.make_loss_fn,
        "masked_lm": masked_lm.make_loss_fn,
        "span_corruption": span_corruption.make_loss_fn,
        "classification": classification.make_loss_fn,
        "seq2seq": seq2seq.make_loss_fn,
    }
    if name not in factories:
        raise ValueError(f"objective={name!r} is unknown; choose one of {sorted(factories)}")
    return factories[name]


def get_batch_transform(config, tokenizer):
    """The host-side transform `config.objective` needs (None for causal_lm and the task
    objectives classification / seq2seq).

    Raises:
      ValueError: the objective does not fit `model.family`, or its arguments are invalid.
    """
    from objectives import masked_lm, prefix_lm, span_corruption
    from objectives.transforms import special_ids

    name, family = config.objective, config.model.family
    if name not in FAMILIES:
        raise ValueError(f"objective={name!r} is unknown; choose one of {sorted(FAMILIES)}")
    if family not in FAMILIES[name]:
        raise ValueError(
            f"objective={name!r} trains model.family in {FAMILIES[name]}, not {family!r}; "
            "set model.family or objective"
        )
    args = config.objective_args
    ids = special_ids(tokenizer, config.model.vocab_size)
    if name == "masked_lm":
        if args.nsp and not config.model.nsp_head:
            raise ValueError("objective_args.nsp needs model.nsp_head=True")
        return masked_lm.MaskedLMTransform(
            ids,
            mask_rate=args.mask_rate,
            mask_frac=args.mask_frac,
            random_frac=args.random_frac,
            nsp=args.nsp,
        )
    if name == "span_corruption":
        return span_corruption.SpanCorruptionTransform(
            ids,
            config.data.seq_len,
            noise_density=args.noise_density,
            mean_span=args.mean_span,
            target_len=args.target_len,
        )
    if name == "prefix_lm":
        return prefix_lm.PrefixLMTransform()
    return None


def summarize(aux: dict) -> dict[str, float]:
    """Host-side metrics from summed loss `aux` values: `loss` (nats per token) and
    `bits_per_byte` from `nll_sum`, `tokens`, `bytes`; every other `<name>_sum` as `<name>`,
    divided by `<name>_count` when the loss gives one and by `tokens` otherwise (classification's
    `accuracy_sum`, DPO's `accuracy_sum` over pairs, masked LM's `nsp_nll_sum` over examples)."""
    nll, tokens, n_bytes = float(aux["nll_sum"]), float(aux["tokens"]), float(aux["bytes"])
    out = {
        "loss": nll / max(tokens, 1.0),
        "bits_per_byte": nll / np.log(2.0) / max(n_bytes, 1.0),
    }
    for key, value in aux.items():
        name = key.removesuffix("_sum")
        if key.endswith("_sum") and key != "nll_sum":
            out[name] = float(value) / max(float(aux.get(f"{name}_count", tokens)), 1.0)
    return out
