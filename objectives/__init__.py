"""Loss-function factories: `make_loss_fn(cfg, apply_fn, ...) -> loss_fn(params, batch, rng)`."""

from collections.abc import Callable

import numpy as np


def get_loss_fn(name: str) -> Callable:
    """The loss factory for `config.objective`."""
    from objectives import causal_lm, distill

    # 'distill' also needs the teacher (keyword arguments): train/distill.py builds it in the step.
    factories = {"causal_lm": causal_lm.make_loss_fn, "distill": distill.make_loss_fn}
    if name not in factories:
        raise ValueError(f"objective={name!r} is unknown; choose one of {sorted(factories)}")
    return factories[name]


def summarize(aux: dict) -> dict[str, float]:
    """Nats per token and bits per byte from summed loss `aux` values (host side)."""
    nll, tokens, n_bytes = float(aux["nll_sum"]), float(aux["tokens"]), float(aux["bytes"])
    return {
        "loss": nll / max(tokens, 1.0),
        "bits_per_byte": nll / np.log(2.0) / max(n_bytes, 1.0),
    }
