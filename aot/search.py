"""Mesh search: compile every mesh that divides the slice and the model, rank those that fit.

Candidates are the factorisations of the chip count over (data, fsdp, tensor, stage), each
under the rule table it needs (`dp`, `fsdp`, `tp`, `fsdp_tp`). Cheap checks prune first: the
batch must split over data x fsdp (per microbatch), tensor over the heads, kv heads and MLP
width, stage over the layers (with at least one microbatch per stage). With several slices
`data` must be a multiple of the slice count (data parallelism is what crosses DCN). Every
survivor is compiled for real; the ranking is the roofline step time among those that fit.
"""

import copy
import itertools

from aot.slices import Slice
from models.sizes import resolved_dims


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(config, slice_: Slice, max_tensor: int = 16, max_stage: int = 8) -> list[dict]:
    """Mesh sizes (data, stage, fsdp, tensor) worth compiling for `config` on `slice_`."""
    n = slice_.total_chips
    L, D, N, K, H, F, V = resolved_dims(config.model)
    rows = config.data.batch_size // config.train.grad_accum
    out = []
    for tensor, stage in itertools.product(_divisors(n), _divisors(n)):
        if tensor > max_tensor or stage > max_stage or n % (tensor * stage):
            continue
        if N % tensor or K % tensor or F % tensor or config.model.vocab_size % tensor:
            continue
        if stage > 1 and (L % stage or rows % stage):
            continue
        rest = n // (tensor * stage)
        for fsdp in _divisors(rest):
            data = rest // fsdp
            if rows % (data * fsdp) or data % slice_.num_slices:
                continue
            if fsdp > 1 and D % fsdp:
                continue
            out.append({"data": data, "stage": stage, "fsdp": fsdp, "tensor": tensor})
    return out


def rules_for(mesh: dict) -> str:
    if mesh["tensor"] > 1:
        return "fsdp_tp" if mesh["fsdp"] > 1 else "tp"
    return "fsdp" if mesh["fsdp"] > 1 else "dp"


def search(config, slice_: Slice, *, devices=None, log=print, limit: int = 24) -> list[dict]:
    """Compiles the candidate meshes (at most `limit`, fewest model-parallel axes first).

    Returns:
      One report per mesh (aot/compile.py), or `{'mesh', 'rules', 'error'}` for a mesh that did
      not compile; those that fit first, by roofline step time, then the rest by HBM.
    """
    from aot.compile import compile_for

    devices = slice_.devices() if devices is None else devices
    meshes = sorted(candidates(config, slice_), key=lambda m: (m["stage"], m["tensor"], m["data"]))
    out = []
    for mesh in meshes[:limit]:
        cfg = copy.deepcopy(config)
        with cfg.unlocked():
            cfg.parallel.mesh.update(mesh)
            cfg.parallel.rules = rules_for(mesh)
            if mesh["stage"] > 1 and not cfg.parallel.pipeline.microbatches:
                cfg.parallel.pipeline.microbatches = mesh["stage"]
        try:
            r = compile_for(cfg, slice_, devices=devices, eval_step=False)
        except Exception as e:  # a mesh the compiler rejects is a result, not a crash
            r = {"mesh": mesh, "rules": rules_for(mesh), "error": " ".join(str(e).split())}
            log(f"  {mesh}: did not compile: {r['error'][:120]}")
        else:
            log(
                f"  {mesh} ({r['rules']}): {r['hbm_bytes_per_chip'] / 2**30:.2f} GiB/chip, "
                f"step {r['step_time_s'] * 1e3:.1f} ms, compiled in {r['compile_s']:.0f} s"
            )
        out.append(r)
    fits = sorted((r for r in out if r.get("fits")), key=lambda r: r["step_time_s"])
    rest = sorted(
        (r for r in out if not r.get("fits")), key=lambda r: r.get("hbm_bytes_per_chip", 1e30)
    )
    return fits + rest
