"""Compression methods applied to a trained checkpoint, each measured the same way.

`compress(method, config, params, tools, **options)` returns the new model config, the new
parameter tree and what was done; `measure` gives the report line's numbers: held-out loss and
bits/byte (the run's fixed eval batches), checkpoint bytes (the tree written with Orbax, as
`save_params` writes it), parameters (and non-zero parameters) and training FLOPs per token
(models/counting.py `count_tree`: real for low-rank and structured pruning; unstructured
sparsity only lowers `flops_per_token_nonzero`, which a sparse kernel could reach).

Methods (options in brackets):
- `int8`, `int4`: per-channel symmetric weight-only quantization, stored as int8 + scales
  [finetune_steps first, with `qat` as fake-quant training at the same bits; `bits` overrides
  the weight bits, e.g. 3].
- `w8a8`, `w4a8`: int8 / int4 weights, and int8 per-row activations at every dense matmul
  (simulated: `model.act_bits=8` fake-quantizes them) [finetune_steps, qat, bits, act_bits].
  With finetune_steps, `info["loss_tuned_f32"]` is the tuned tree's held-out loss before
  quantization (unquantized weights and activations): the f32 reference of the same steps.
- `prune`: unstructured magnitude pruning [sparsity, scope; finetune_steps after, masks fixed].
- `structured`: remove heads and MLP neurons [keep_heads, keep_ff, importance; finetune_steps].
- `lowrank`: truncated SVD [rank or energy, targets; finetune_steps].
"""

import os
import shutil
import subprocess
import tempfile

import jax
import orbax.checkpoint as ocp

from compress.lowrank import DEFAULT_TARGETS, factorize_params
from compress.magnitude import apply_masks, magnitude_masks, prunable_spec, sparsity_of
from compress.masked import masked
from compress.quant import dequantize_params, logical_names, quant_spec, quantize_params
from compress.structured import importance, prune_structured
from models import get_model
from models.counting import count_tree

METHODS = ("none", "int8", "int4", "w8a8", "w4a8", "prune", "structured", "lowrank")
# Quantization methods: (weight bits, activation bits).
QUANT_BITS = {"int8": (8, 0), "int4": (4, 0), "w8a8": (8, 8), "w4a8": (4, 8)}


def save_params(path: str, params) -> None:
    """Writes a parameter tree with Orbax (replacing `path`: Orbax commits by rename)."""
    if os.path.exists(path):
        shutil.rmtree(path)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(path), jax.device_get(params))


def restore_params(path: str):
    with ocp.StandardCheckpointer() as ckptr:
        return ckptr.restore(os.path.abspath(path))


def dir_bytes(path: str) -> int:
    """Bytes of every file under `path`."""
    return int(subprocess.check_output(["du", "-sb", path]).split()[0])


def _with(model_cfg, **fields):
    cfg = model_cfg.copy_and_resolve_references()
    with cfg.unlocked():
        for k, v in fields.items():
            cfg[k] = v
    return cfg


def compress(
    method: str,
    config,
    params,
    tools,
    *,
    sparsity: float = 0.5,
    scope: str = "global",
    keep_heads: int = 0,
    keep_ff: int = 0,
    importance_kind: str = "taylor",
    rank: int = 0,
    energy: float = 0.0,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    finetune_steps: int = 0,
    finetune_lr: float = 3e-4,
    qat: bool = False,
    bits: int = 0,
    act_bits: int = -1,
):
    """Applies `method` (see the module docstring) to `params` of `config.model`.

    `bits` (> 0) and `act_bits` (>= 0) override a quantization method's weight and activation
    bits.

    Returns:
      (new model config, new params (host), info dict of what was chosen).
    """
    if method not in METHODS:
        raise ValueError(f"--method={method!r} is unknown; choose one of {METHODS}")
    cfg = config.model
    model = get_model(cfg.family)
    info: dict = {"method": method, "finetune_steps": finetune_steps}

    def tune(p, c, wrap=None):
        if not finetune_steps:
            return p
        p, loss = tools.finetune(p, c, steps=finetune_steps, lr=finetune_lr, wrap=wrap)
        info["finetune_train_loss"] = loss
        return p

    if method in QUANT_BITS:
        w_bits, a_bits = QUANT_BITS[method]
        w_bits = bits or w_bits
        a_bits = a_bits if act_bits < 0 else act_bits
        info.update(bits=w_bits, act_bits=a_bits, qat=qat)
        if qat:  # fake-quant training at the deployment setting, then real quantization
            params = tune(params, _with(cfg, weight_bits=w_bits, act_bits=a_bits))
        else:
            params = tune(params, cfg)
        if finetune_steps:
            f32_cfg = _with(cfg, weight_bits=0, act_bits=0)
            info["loss_tuned_f32"] = tools.evaluate(params, f32_cfg)["loss"]
        new_cfg = _with(cfg, weight_bits=0, act_bits=a_bits)
        q = quantize_params(params, quant_spec(model, cfg), w_bits)
        return new_cfg, jax.device_get(q), info
    if method == "prune":
        prunable = prunable_spec(model, cfg)
        masks = magnitude_masks(params, prunable, sparsity, scope)
        params = apply_masks(params, masks)
        # Fine-tuning holds these masks: pruning once at the (already reached) sparsity at step
        # 0 gives the same masks, which the optimizer then keeps.
        params = tune(params, cfg, lambda opt: masked(opt, prunable, sparsity, scope=scope))
        info.update(sparsity=sparsity, scope=scope, measured_sparsity=sparsity_of(params, prunable))
        return cfg, jax.device_get(params), info
    if method == "structured":
        kw = {"grads_list": tools.grads(params, cfg)} if importance_kind == "taylor" else {}
        scores = importance(params, logical_names(model, cfg), method=importance_kind, **kw)
        new_cfg, params = prune_structured(
            params,
            cfg,
            model,
            scores,
            n_heads=keep_heads or cfg.n_heads,
            d_ff=keep_ff or cfg.d_ff,
        )
        info.update(importance=importance_kind, n_heads=new_cfg.n_heads, d_ff=new_cfg.d_ff)
        return new_cfg, jax.device_get(tune(params, new_cfg)), info
    if method == "lowrank":
        params, ranks = factorize_params(
            params, model, cfg, targets=tuple(targets), rank=rank, energy=energy
        )
        info.update(ranks=ranks, energy=energy)
        return cfg, jax.device_get(tune(params, cfg)), info
    return cfg, jax.device_get(tune(params, cfg)), info


def measure(params, model_cfg, tools, seq_len: int) -> dict:
    """Held-out loss, checkpoint bytes, parameters and FLOPs per token of a (compressed) tree."""
    out = tools.evaluate(params, model_cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "params")
        save_params(path, params)
        out["ckpt_bytes"] = dir_bytes(path)
    out["param_bytes"] = sum(x.nbytes for x in jax.tree.leaves(jax.device_get(params)))
    out.update(count_tree(dequantize_params(params), model_cfg, seq_len))
    return out
