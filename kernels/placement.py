"""Where a kernel runs: the target platform, and one call per device's rows and heads.

Pallas (Mosaic) kernels cannot be partitioned by XLA ("Mosaic kernels cannot be automatically
partitioned"), so under a mesh they run inside `jax.shard_map`, each device on its own rows and
heads. Which mesh axes hold rows and heads is read from the LOGICAL axis names ('batch', 'heads',
'kv_heads') through flax's active rules (`nn.logical_axis_rules`) and the active mesh
(`jax.set_mesh`), so the models never name a mesh axis. The mesh axes are Auto (parallel/mesh.py):
under Explicit axes `shard_map` wants its inputs already sharded as its in_specs.

Interpret mode. A Pallas TPU kernel runs on CPU only interpreted. The rule: with a mesh active,
the platform of the mesh's devices decides (`get_abstract_mesh().abstract_device.platform`), so
compiling ahead of time for compile-only TPU devices from a CPU host (`JAX_PLATFORMS=cpu`, mesh over
`jax.experimental.topologies` devices) uses the real kernel; with no mesh, `jax.default_backend()`
decides. So an AOT compile for TPU must set the mesh (`jax.set_mesh`), as the train step does.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
from jax.sharding import PartitionSpec as P

Array = jax.Array


def target_platform() -> str:
    """'cpu', 'tpu' or 'gpu': what the computation being traced compiles for (module docstring)."""
    mesh = jax.sharding.get_abstract_mesh()
    if not mesh.empty:
        device = getattr(mesh, "abstract_device", None)
        if device is not None and device.platform:
            return device.platform
    return jax.default_backend()


def interpret() -> bool:
    """Whether Pallas TPU kernels must run in interpret mode (the target is a CPU)."""
    return target_platform() == "cpu"


def _axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _resolve(logical: tuple[str | None, ...], mesh) -> list[tuple[str, ...]]:
    """Mesh axes of each dimension under the active rules, keeping axes this mesh can split."""
    usable = set(mesh.axis_names) - set(mesh.manual_axes)
    spec = nn.logical_to_mesh_axes(logical)
    return [tuple(a for a in _axes(entry) if a in usable) for entry in spec]


def _size(axes: tuple[str, ...], mesh) -> int:
    size = 1
    for a in axes:
        size *= mesh.shape[a]
    return size


def _entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def per_shard(fn: Callable, q_BTNH: Array, k_BSKH: Array, v_BSKH: Array, segments: dict) -> Array:
    """`fn(q_BTNH, k_BSKH, v_BSKH, segments) -> out_BTNH` on each device's rows and heads.

    With no mesh active (one device, tests) `fn` is called directly. Under a mesh it runs in
    `jax.shard_map` with rows split as the rules split 'batch' and heads as they split 'heads';
    the sequence and head dims are whole inside (the kernels need whole sequences; a sequence
    split by the rules is gathered on the way in). Heads are split only if 'kv_heads' goes to the
    same mesh axes (or K == 1) and both N and K divide: query head n uses kv head n // (N / K), so
    each device must hold the kv heads of its query heads. Rows go over the leading batch axes
    whose product divides B. What is left out is replicated inside: correct, but repeated work.

    Args:
      fn: the per-device attention; `segments` is a dict of [B, T] and [B, S] int arrays
        ('q', 'kv') or empty.
      q_BTNH, k_BSKH, v_BSKH: queries, keys and values (K kv heads, N % K == 0).
      segments: {'q': segment_ids_BT, 'kv': segment_ids_BS} or {}.

    Returns:
      The attention output [B, T, N, H].
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(mesh.axis_names) - set(mesh.manual_axes):
        return fn(q_BTNH, k_BSKH, v_BSKH, segments)
    B, _, N, _ = q_BTNH.shape
    K = k_BSKH.shape[2]
    batch, _, heads, _ = _resolve(("batch", None, "heads", None), mesh)
    kv_heads = _resolve(("batch", None, "kv_heads", None), mesh)[2]
    while B % _size(batch, mesh):  # the leading axes that divide B (the rest replicate rows)
        batch = batch[:-1]
    heads = tuple(a for a in heads if a not in batch)
    h = _size(heads, mesh)
    if N % h or not (K == 1 or (kv_heads == heads and K % h == 0)):
        heads = ()
    kv_heads = () if K == 1 else heads
    q_spec = P(_entry(batch), None, _entry(heads), None)
    kv_spec = P(_entry(batch), None, _entry(kv_heads), None)
    seg_specs = {name: P(_entry(batch), None) for name in segments}
    manual = frozenset(mesh.axis_names) - frozenset(mesh.manual_axes)
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(q_spec, kv_spec, kv_spec, seg_specs),
        out_specs=q_spec,
        axis_names=manual,
        check_vma=False,
    )(q_BTNH, k_BSKH, v_BSKH, segments)
