"""Logical annotations -> `NamedSharding`s, with divisibility checked before anything compiles."""

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def named_shardings(mesh_specs, mesh: Mesh):
    return jax.tree.map(
        lambda s: NamedSharding(mesh, s), mesh_specs, is_leaf=lambda x: isinstance(x, P)
    )


def check_divisible(shapes, mesh_specs, mesh: Mesh) -> None:
    """Raises a one-line ValueError for the first array dim its mesh axes do not divide."""
    flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
    flat_specs = jax.tree.leaves(mesh_specs, is_leaf=lambda x: isinstance(x, P))
    for (path, leaf), spec in zip(flat_shapes, flat_specs, strict=True):
        for dim, (size, axes) in enumerate(zip(leaf.shape, tuple(spec), strict=False)):
            if axes is None:
                continue
            axes = (axes,) if isinstance(axes, str) else tuple(axes)
            n = 1
            for a in axes:
                n *= mesh.shape[a]
            if size % n:
                name = jax.tree_util.keystr(path)
                raise ValueError(
                    f"{name} dim {dim} has size {size}, not divisible by mesh axes "
                    f"{axes} of size {n}; change the model size or parallel.mesh"
                )


def batch_spec(rules) -> P:
    """Mesh spec of a [B, T] batch array under `rules`."""
    return nn.logical_to_mesh_axes(("batch", "length"), rules)


def batch_shardings(batch_shapes, mesh: Mesh, rules) -> dict:
    """Shardings of batch arrays: keys of [B, T] arrays, or a dict of key -> rank (1 or 2)."""
    spec = batch_spec(rules)
    ranks = batch_shapes if isinstance(batch_shapes, dict) else dict.fromkeys(batch_shapes, 2)
    return {k: NamedSharding(mesh, spec if r == 2 else P(spec[0])) for k, r in ranks.items()}


def check_batch(batch_size: int, mesh: Mesh, rules, grad_accum: int = 1) -> None:
    """Each microbatch (batch_size / grad_accum rows) must split evenly over the batch axes."""
    rows = batch_size // grad_accum
    axes = batch_spec(rules)[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    n = 1
    for a in axes:
        n *= mesh.shape[a]
    if rows % n:
        what = f"data.batch_size={batch_size}" + (
            f" / train.grad_accum={grad_accum} = {rows} rows per microbatch"
            if grad_accum > 1
            else ""
        )
        raise ValueError(
            f"{what} is not divisible by the batch mesh axes {axes} (size {n}); change "
            "data.batch_size, train.grad_accum or parallel.mesh"
        )


def process_batch_block(sharding: NamedSharding, global_rows: int) -> tuple[int, int]:
    """`(index, count)` of the block of batch rows this process's devices hold.

    The global batch splits into `count` equal blocks of rows, and this process feeds block
    `index` (its data loader reads only that shard). Usually `(process_index, process_count)`;
    processes whose devices hold the same rows (a batch replicated over tensor-parallel hosts)
    read the same block.

    Raises:
      ValueError: the process's rows are not one contiguous block.
    """
    rows = set()
    for index in sharding.addressable_devices_indices_map((global_rows, 1)).values():
        start, stop, _ = index[0].indices(global_rows)
        rows.update(range(start, stop))
    lo, hi = min(rows), max(rows) + 1
    if len(rows) != hi - lo or global_rows % (hi - lo) or lo % (hi - lo):
        raise ValueError(
            f"this process holds batch rows {sorted(rows)[:4]}... which are not one aligned "
            "block; order parallel.mesh so that each host holds whole data shards"
        )
    return lo // (hi - lo), global_rows // (hi - lo)
