"""Compile a run's train and eval steps for a slice it is not running on, and read the result.

The run is built abstractly (`train.loop.Run(..., abstract=True)`: `eval_shape` plus shardings, no
parameter is ever allocated) over compile-only devices (aot/slices.py), lowered with
ShapeDtypeStructs that carry their shardings, and compiled by the slice's own compiler (libtpu,
or XLA:GPU for the GPU target description). What comes back is the real executable: its memory
analysis is the buffer assignment on the chip, its HLO the optimised, partitioned program.
"""

import math
import re
import time

import jax
import numpy as np

from aot import collectives
from aot.hlo import Module, matmul_flops
from aot.roofline import roofline
from aot.slices import Slice

GiB = 1024**3


def _bytes_per_chip(tree) -> float:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (its largest shard)."""
    total = 0.0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
    return total


class OutOfMemory(str):
    """The compiler's message when it refused the program for lack of HBM."""

    def needed_bytes(self, arguments: float) -> tuple[float, float | None]:
        """(bytes the program needs per chip, the HBM the compiler says it has), from the text."""
        unit = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        num = r"([\d.]+)([KMGTB]?)"
        to_bytes = lambda v, u: float(v) * unit[u]  # noqa: E731
        m = re.search(rf"HLO temporaries \({num}\) exceeds available HBM \({num}\)", self)
        if m:  # temporaries alone: the arguments come on top
            return arguments + to_bytes(*m.group(1, 2)), to_bytes(*m.group(3, 4))
        m = re.search(rf"Used {num} of {num} hbm", self)
        if m:
            return to_bytes(*m.group(1, 2)), to_bytes(*m.group(3, 4))
        return float("inf"), None


def _memory(compiled) -> dict[str, float]:
    m = compiled.memory_analysis()
    out = {
        "argument_bytes": float(m.argument_size_in_bytes),
        "output_bytes": float(m.output_size_in_bytes),
        "alias_bytes": float(m.alias_size_in_bytes),
        "temp_bytes": float(m.temp_size_in_bytes),
        "code_bytes": float(m.generated_code_size_in_bytes),
    }
    # Donated state: outputs that alias arguments take no second buffer.
    out["total_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
        + out["code_bytes"]
    )  # fmt: skip
    return out


def compile_steps(config, slice_: Slice, *, devices=None, eval_step: bool = True):
    """Builds `config`'s run abstractly on `slice_` and compiles its steps.

    Returns:
      (run, lowered train step, compiled train step, compiled eval step or None, timings).

    Raises:
      ValueError: the config does not fit the slice's shape (mesh, divisibility) or is invalid.
    """
    from train.loop import Run  # the whole training stack: imported only when compiling

    devices = slice_.devices() if devices is None else devices
    t0 = time.perf_counter()
    run = Run(config, synthetic_data=True, devices=devices, abstract=True)
    # The persistent cache cannot load executables of compile-only devices: keep them out of it.
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        return _compile(run, eval_step, t0)
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)


def _compile(run, eval_step: bool, t0: float):
    with run.activate():
        batch = run.abstract_batch()
        lowered = run.train_step.lower(run.state, batch, run.schedule_args)
        t1 = time.perf_counter()
        try:
            compiled = lowered.compile()
        except jax.errors.JaxRuntimeError as e:  # the TPU compiler refuses what cannot fit
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            compiled, eval_step = OutOfMemory(str(e)), False
        t2 = time.perf_counter()
        ev = run.eval_step.lower(run.state.params, batch).compile() if eval_step else None
    t3 = time.perf_counter()
    return (
        run,
        lowered,
        compiled,
        ev,
        {"lower_s": t1 - t0, "compile_s": t2 - t1, "eval_compile_s": t3 - t2},
    )


def compile_for(config, slice_: Slice, *, devices=None, eval_step: bool = True) -> dict:
    """Compiles `config`'s train (and eval) step for `slice_`; returns the report's numbers.

    Args:
      config: a run config (`parallel.mesh` must divide the slice's chips).
      slice_: the target (aot/slices.py).
      devices: the slice's compile-only devices, if already made (they are reusable).
      eval_step: also compile the eval step (its memory is reported beside the train step's).

    Raises:
      ValueError: the config does not fit the slice's shape (mesh, divisibility) or is invalid.
    """
    run, lowered, compiled, ev, times = compile_steps(
        config, slice_, devices=devices, eval_step=eval_step
    )
    chips = run.mesh.size
    order = [getattr(d, "slice_index", 0) or 0 for d in run.mesh.devices.flat]
    # XLA's cost_analysis() counts a while body once (aot/hlo.py): count with trip counts.
    hlo_flops = matmul_flops(lowered.as_text()) / chips
    tokens = config.data.batch_size * config.data.seq_len
    if config.model.get("attention_impl", "xla") != "xla":
        # A fused kernel is a custom call the count cannot see: add the model's attention FLOPs
        # (the full T x S window; a causal kernel skips about half), scaled by the recomputation
        # the rest of the program shows.
        attention = run.flops["attention_flops_per_token"] * tokens / chips
        rest = (run.flops["flops_per_token"] - run.flops["attention_flops_per_token"]) * tokens
        hlo_flops += attention * max(hlo_flops / max(rest / chips, 1.0), 1.0)
    capacity = slice_.chip.hbm_bytes
    if isinstance(compiled, OutOfMemory):  # no executable: what the compiler said, and counts
        arguments = _bytes_per_chip(run.state) + _bytes_per_chip(run.abstract_batch())
        needed, available = compiled.needed_bytes(arguments)
        capacity = available or capacity
        memory = {"argument_bytes": arguments, "temp_bytes": needed - arguments}
        memory |= {"output_bytes": 0.0, "alias_bytes": 0.0, "code_bytes": 0.0}
        memory["total_bytes"] = needed
        kinds, hbm_accessed = {}, 0.0
    else:
        hlo = compiled.as_text()
        kinds = collectives.by_kind(collectives.collectives(hlo, order))
        memory = _memory(compiled)
        hbm_accessed = Module(hlo).hbm_bytes()
    model_flops = run.flops["flops_per_token"] * tokens / chips  # fwd + bwd (6N + attention)
    roof = roofline(
        slice_.chip,
        hlo_flops=hlo_flops,
        hbm_bytes_accessed=hbm_accessed,
        ici_wire_bytes=sum(k["wire_bytes_ici"] for k in kinds.values()),
        dcn_wire_bytes=sum(k["wire_bytes_dcn"] for k in kinds.values()),
        model_flops=model_flops,
        tokens=tokens,
    )
    return {
        "slice": slice_.name,
        "topology": slice_.topology,
        "num_slices": slice_.num_slices,
        "chips": chips,
        "chip": slice_.chip.name,
        "mesh": {k: int(v) for k, v in run.mesh.shape.items()},
        "rules": config.parallel.rules,
        "attention_impl": config.model.get("attention_impl", "xla"),
        "params": run.counts["total"],
        "params_non_embedding": run.counts["non_embedding"],
        "tokens_per_step": tokens,
        "param_bytes_per_chip": _bytes_per_chip(run.state.params),
        "opt_state_bytes_per_chip": _bytes_per_chip(run.state.opt_state),
        "memory": memory,
        "eval_memory": _memory(ev) if ev is not None else None,
        "hbm_bytes_per_chip": memory["total_bytes"],
        "hbm_capacity_bytes": capacity,
        "fits": memory["total_bytes"] <= capacity and not isinstance(compiled, OutOfMemory),
        "compiler_error": compiled if isinstance(compiled, OutOfMemory) else None,
        "model_flops_per_step": model_flops,
        "hlo_flops_per_step": hlo_flops,
        "hbm_bytes_accessed_per_step": hbm_accessed,
        "collectives": kinds,
        **roof,
        **times,
    }
