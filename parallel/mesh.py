"""Device mesh from config: axes ('data', 'stage', 'fsdp', 'tensor'), one size may be -1.

Axes are `Auto` (not the jax 0.10 default `Explicit`): the models annotate activations with
logical constraints, which under Explicit axes act as assertions rather than hints.

Devices are laid out by the physical topology (`mesh_utils`): on a TPU torus, neighbouring
indices of the innermost (most communication-intensive) axes are neighbouring chips. Across
several slices (multi-slice TPU: devices carry `slice_index`), `data` is the one axis that
spans slices: its size is a multiple of the slice count and data-parallel gradient reductions
are the only traffic over the data-centre network (DCN); every other axis stays in a slice (ICI).
"""

import math

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
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


def num_slices(devices) -> int:
    """How many TPU slices (ICI domains joined by DCN) `devices` span (1 without slice_index)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def _device_grid(shape: tuple[int, ...], devices) -> np.ndarray:
    slices = num_slices(devices)
    if slices > 1:
        if shape[0] % slices:
            raise ValueError(
                f"parallel.mesh.data={shape[0]} is not a multiple of the {slices} slices; data "
                "parallelism is what runs over DCN between slices: make it a multiple"
            )
        ici = (shape[0] // slices, *shape[1:])
        dcn = (slices,) + (1,) * (len(shape) - 1)
        try:
            return mesh_utils.create_hybrid_device_mesh(
                ici, dcn, devices, allow_split_physical_axes=True
            )
        except (AssertionError, NotImplementedError, ValueError):
            by_slice = sorted(devices, key=lambda d: (d.slice_index, d.id))
            return np.asarray(by_slice).reshape(shape)
    for split in (False, True):  # the torus's own axes first, then split physical axes
        try:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=split)
        except (AssertionError, NotImplementedError, ValueError):
            continue
    return np.asarray(devices).reshape(shape)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Builds the mesh over `devices` (None: all devices), laid out for the physical topology."""
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(mesh_cfg, len(devices))
    grid = _device_grid(shape, devices)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
