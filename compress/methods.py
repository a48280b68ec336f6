"""Compression methods applied to a trained parameter tree (no training: a fine-tune before or
after is a run of the one loop, compress/study.py).

`compress(method, model_cfg, params, evaluator, **options)` returns the new model config, the new
parameter tree and what was done (`info`, with the activation bits the compressed model runs
with in `act_bits`); compress/measure.py `measure` gives the report line's numbers.

Methods (options in brackets):
- `int8`, `int4`: per-channel symmetric weight-only quantization, stored as int8 + scales
  [`bits` overrides the weight bits, e.g. 3].
- `w8a8`, `w4a8`: int8 / int4 weights, and int8 per-row activations at every dense matmul
  (simulated: `quant.act_bits=8` fake-quantizes them) [bits, act_bits].
- `prune`: unstructured magnitude pruning [sparsity, scope]; idempotent, so it also measures a
  tree a masked fine-tune already pruned.
- `structured`: remove heads and MLP neurons [keep_heads, keep_ff (0: all), importance].
- `lowrank`: truncated SVD [rank or energy, targets].
- `none`: the tree as it is.
"""

import jax

from compress import structured
from compress.lowrank import DEFAULT_TARGETS, factorize_params
from compress.magnitude import apply_masks, magnitude_masks, prunable_spec, sparsity_of
from compress.quant import logical_names, qmax, quant_spec, quantize_params
from models import get_model

METHODS = ("none", "int8", "int4", "w8a8", "w4a8", "prune", "structured", "lowrank")
# Quantization methods: (weight bits, activation bits).
QUANT_BITS = {"int8": (8, 0), "int4": (4, 0), "w8a8": (8, 8), "w4a8": (4, 8)}


def quant_bits(method: str, bits: int = 0, act_bits: int = -1) -> tuple[int, int]:
    """(weight bits, activation bits) of a quantization method, `bits` (> 0) and `act_bits`
    (>= 0) overriding its own."""
    w_bits, a_bits = QUANT_BITS[method]
    w_bits, a_bits = bits or w_bits, a_bits if act_bits < 0 else act_bits
    for b in (w_bits, a_bits):
        if b:
            qmax(b)  # 2..8
    return w_bits, a_bits


def compress(method: str, model_cfg, params, evaluator=None, *, sparsity: float = 0.5,
             scope: str = "global", keep_heads: int = 0, keep_ff: int = 0, rank: int = 0,
             importance: str = "taylor", energy: float = 0.0, bits: int = 0, act_bits: int = -1,
             targets: tuple[str, ...] = DEFAULT_TARGETS):  # fmt: skip
    """(new model config, new host params, info dict of what was chosen) of `method` (one of
    METHODS, see the module docstring) applied to the host tree `params` of `model_cfg`;
    `evaluator` (compress/measure.py) gives the gradients of structured pruning's Taylor scores."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; choose one of {METHODS}")
    model = get_model(model_cfg.family)
    info: dict = {"method": method, "act_bits": 0}
    if method in QUANT_BITS:
        w_bits, a_bits = quant_bits(method, bits, act_bits)
        info.update(bits=w_bits, act_bits=a_bits)
        params = quantize_params(params, quant_spec(model, model_cfg), w_bits)
    elif method == "prune":
        prunable = prunable_spec(model, model_cfg)
        params = apply_masks(params, magnitude_masks(params, prunable, sparsity, scope))
        info.update(sparsity=sparsity, scope=scope, measured_sparsity=sparsity_of(params, prunable))
    elif method == "structured":
        grads = evaluator.grads(params, model_cfg) if importance == "taylor" else ()
        names = logical_names(model, model_cfg)
        scores = structured.importance(params, names, method=importance, grads_list=grads)
        model_cfg, params = structured.prune_structured(
            params, model_cfg, model, scores, n_heads=keep_heads, d_ff=keep_ff
        )
        info.update(importance=importance, n_heads=model_cfg.n_heads, d_ff=model_cfg.d_ff)
    elif method == "lowrank":
        params, ranks = factorize_params(
            params, model, model_cfg, targets=tuple(targets), rank=rank, energy=energy
        )
        info.update(ranks=ranks, energy=energy)
    return model_cfg, jax.device_get(params), info
