"""Device mesh from config: axes ('data', 'stage', 'fsdp', 'tensor'), one size may be -1.

Axes are `Auto` (not the jax 0.10 default `Explicit`): the models annotate activations with
logical constraints, which under Explicit axes act as assertions rather than hints.
"""

import math

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "stage", "fsdp", "tensor")
_AXIS = {"type": int, "min": -1, "not": 0}  # a size, or -1: the devices the others leave

# Type, range and allowed values of every `parallel` field (the keys: models/sizes.py
# MODEL_FIELDS; `not` lists excluded values). `rules` is a registry name (parallel/rules.py).
PARALLEL_FIELDS = {
    "mesh": dict.fromkeys(AXES, _AXIS),
    "rules": {"type": str},
    "pipeline": {"microbatches": {"type": int, "min": 0}, "repeats": {"type": int, "min": 1}},
}


def default_parallel_config() -> ml_collections.ConfigDict:
    """The `parallel` block of a run config: data parallel over every device by default."""
    return ml_collections.ConfigDict(
        {
            "mesh": {"data": -1, "stage": 1, "fsdp": 1, "tensor": 1},
            "rules": "fsdp_tp",  # see parallel/rules.py; axes of size 1 cost nothing
            # Used when mesh.stage > 1 (parallel/pipeline.py): M microbatches per pipelined
            # batch (0 = one per stage) and R passes around the stages (1 = GPipe, more =
            # circular); the bubble is (P - 1) / (R * M + P - 1).
            "pipeline": {"microbatches": 0, "repeats": 1},
        }
    )


def mesh_shape(mesh_cfg, n_devices: int) -> tuple[int, ...]:
    """Resolves the -1 entry of `parallel.mesh` and checks the product equals the device count."""
    sizes = [int(mesh_cfg[a]) for a in AXES]
    if sizes.count(-1) > 1:
        raise ValueError("parallel.mesh: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(
            f"parallel.mesh sizes must be positive or -1, got {dict(zip(AXES, sizes, strict=True))}"
        )
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(
                f"parallel.mesh: {n_devices} devices do not divide by the fixed axes "
                f"(product {known}); change parallel.mesh"
            )
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ValueError(
            f"parallel.mesh {dict(zip(AXES, sizes, strict=True))} has {math.prod(sizes)} devices "
            f"but {n_devices} are available; set one axis to -1"
        )
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Builds the mesh, laid out by `jax.make_mesh` for the physical topology when possible."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    return Mesh(np.asarray(devices).reshape(shape), AXES, axis_types=(AxisType.Auto,) * len(AXES))
