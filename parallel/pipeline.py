"""Pipeline parallelism over the `stage` mesh axis: GPipe and circular (interleaved) schedules.

The pipeline runs any stack of identical layers: `layer_fn(x, p, side) -> x` applied to the
stacked parameters `layers` (every leaf [L, ...]) in order 0..L-1. `side` holds per-example inputs
every layer reads (positions, attention bias, encoder outputs), each with a leading batch axis. A
model exposes the stack through its `layer_stack=` hook; this module never sees the model.

Layout. With P stages and R repeats (R = 1: GPipe; R > 1: circular), the L layers form R * P
chunks of Lc = L / (R * P) consecutive layers; chunk c runs on stage c mod P, so stage s holds
chunks s, s + P, ..., and a microbatch passes the ring of stages R times. The batch is split into
M microbatches. Item k = r * M + m (repeat r of microbatch m) enters stage 0 at iteration k and
reaches stage s at iteration k + s, so the schedule takes R * M + P - 1 iterations and each stage
is busy for R * M of them: the bubble is (P - 1) / (R * M + P - 1). A circular schedule needs
M >= P, so that an item's previous repeat has left the last stage before it re-enters stage 0.

Mechanism (MaxText's "vmap over stages"): the per-stage step is `jax.vmap`ped over a leading
stage axis with `spmd_axis_name='stage'`, and every per-stage array is sharded over `stage`, so
the SPMD partitioner gives each device only its stage's work; all stages run in the same
iteration on different microbatches. After each iteration the stage outputs rotate one stage
along the ring (`_rotate`: a collective-permute in the compiled HLO); stage 0 takes fresh
microbatches from, and stores finished repeats into, its own buffer. Every other mesh axis
(data, fsdp, tensor) stays with the partitioner, so the pipeline composes with them, with
gradient accumulation (an outer scan in the train step) and with remat (inside `layer_fn`).
The backward pass is autodiff's: the reverse iterations with the rotation reversed.

Circular layout costs one resharding of the stacked parameters per step: the state keeps layers
in model order, split over `stage` in contiguous blocks, while stage s needs the strided chunks
s, s + P, ...; XLA moves them with an all-to-all (and back for the gradients).
"""

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

STAGE = "stage"
_U = P.UNCONSTRAINED


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Which item each stage works on at each iteration (the same arithmetic the pipeline runs).

    Attributes:
      stages: P, the `stage` mesh axis size.
      microbatches: M, microbatches per pipelined batch.
      repeats: R, passes of each microbatch around the ring of stages (1 = GPipe).
    """

    stages: int
    microbatches: int
    repeats: int = 1

    def __post_init__(self):
        if self.stages < 1 or self.microbatches < 1 or self.repeats < 1:
            raise ValueError(
                f"pipeline stages={self.stages}, microbatches={self.microbatches} and "
                f"repeats={self.repeats} must all be at least 1"
            )
        if self.repeats > 1 and self.microbatches < self.stages:
            raise ValueError(
                f"parallel.pipeline.microbatches={self.microbatches} must be at least the "
                f"stage count {self.stages} for a circular schedule (repeats="
                f"{self.repeats}); raise it or set parallel.pipeline.repeats=1"
            )

    @property
    def name(self) -> str:
        return "gpipe" if self.repeats == 1 else "circular"

    @property
    def iterations(self) -> int:
        return self.repeats * self.microbatches + self.stages - 1

    def table(self) -> np.ndarray:
        """[iterations, stages] int: the item k = r * M + m a stage works on, -1 when idle."""
        t = np.arange(self.iterations)[:, None]
        k = t - np.arange(self.stages)[None, :]
        return np.where((k >= 0) & (k < self.repeats * self.microbatches), k, -1)

    def bubble(self) -> float:
        """Fraction of stage-iterations idle, counted from `table()`."""
        return float((self.table() < 0).mean())

    def expected_bubble(self) -> float:
        """(P - 1) / (R * M + P - 1)."""
        P_, M, R = self.stages, self.microbatches, self.repeats
        return (P_ - 1) / (R * M + P_ - 1)

    def describe(self) -> str:
        return (
            f"pipeline: {self.name}, P={self.stages} stages, M={self.microbatches} "
            f"microbatches, R={self.repeats} repeats, {self.iterations} iterations, bubble "
            f"{self.bubble():.3f} (formula (P-1)/(R*M+P-1) = {self.expected_bubble():.3f})"
        )


def schedule_from_config(pipeline_cfg, stages: int) -> Schedule:
    """The schedule `parallel.pipeline` asks for; `microbatches=0` means one per stage."""
    M = int(pipeline_cfg.microbatches) or stages
    return Schedule(stages=stages, microbatches=M, repeats=int(pipeline_cfg.repeats))


def check_pipeline(schedule: Schedule, n_layers: int, rows: int) -> None:
    """Raises a one-line ValueError unless layers and rows divide over the schedule."""
    chunks = schedule.stages * schedule.repeats
    if n_layers % chunks:
        raise ValueError(
            f"model.n_layers={n_layers} is not divisible by stages x repeats = "
            f"{schedule.stages} x {schedule.repeats}; change model.n_layers, "
            "parallel.mesh.stage or parallel.pipeline.repeats"
        )
    if rows % schedule.microbatches:
        raise ValueError(
            f"parallel.pipeline.microbatches={schedule.microbatches} does not divide the {rows} "
            "rows per step (data.batch_size / train.grad_accum); change one of them"
        )


def _constrain(x: jax.Array, spec: P) -> jax.Array:
    return jax.lax.with_sharding_constraint(x, spec)


def _stage_spec(ndim: int) -> P:
    """Leading axis over `stage`, the rest left to the partitioner."""
    return P(STAGE, *([_U] * (ndim - 1)))


def _to_microbatches(a: jax.Array, M: int) -> jax.Array:
    """[B, ...] -> [M, B / M, ...], microbatch m taking rows m, m + M, ...: with B split into
    contiguous blocks over devices, every device keeps its own rows (no resharding)."""
    return a.reshape(a.shape[0] // M, M, *a.shape[1:]).swapaxes(0, 1)


def _from_microbatches(a: jax.Array) -> jax.Array:
    return a.swapaxes(0, 1).reshape(-1, *a.shape[2:])


@jax.custom_vjp
def _rotate(y_P: jax.Array) -> jax.Array:
    """Stage s's output goes to stage s + 1 (the last stage's to stage 0): one ring shift.

    On a `stage`-sharded axis the partitioner lowers this concatenate of slices to one
    collective-permute of a microbatch's activations per device. The backward pass is the
    inverse shift, written out: autodiff's transpose of the concatenate (pads of the two
    slices) compiles to two permutes of full-size buffers, doubling the backward traffic.
    """
    return jnp.concatenate([y_P[-1:], y_P[:-1]], axis=0)


def _rotate_fwd(y_P):
    return _rotate(y_P), None


def _rotate_bwd(_, g_P):
    return (jnp.concatenate([g_P[1:], g_P[:1]], axis=0),)


_rotate.defvjp(_rotate_fwd, _rotate_bwd)


def _run_chunk(layer_fn, chunk_params, x, side, loop: str):
    """The Lc layers of one chunk (leaves [Lc, ...]), in order."""
    if loop == "scan":
        return jax.lax.scan(lambda h, p: (layer_fn(h, p, side), None), x, chunk_params)[0]
    n = jax.tree.leaves(chunk_params)[0].shape[0]
    for i in range(n):
        x = layer_fn(x, jax.tree.map(lambda w, i=i: w[i], chunk_params), side)
    return x


def pipeline_stack(
    layer_fn: Callable,
    layers,
    x: jax.Array,
    side,
    *,
    schedule: Schedule,
    loop: str = "python",
) -> jax.Array:
    """Applies the L stacked layers to `x` as a pipeline over the `stage` mesh axis.

    Equal to `for l in range(L): x = layer_fn(x, layers[l], side)` (up to float reassociation).
    Call it under `jax.set_mesh(mesh)` with `mesh.shape['stage'] == schedule.stages`.

    Args:
      layer_fn: `(x [b, ...], p, side) -> x` for one layer's parameters `p` (leaves without the L
        axis) on b rows; may be remat-wrapped.
      layers: pytree of stacked parameters, every leaf [L, ...].
      x: activations [B, ...].
      side: pytree of per-example arrays [B, ...] every layer reads (not transformed).
      schedule: stages, microbatches and repeats.
      loop: 'python' or 'scan' over the layers within a chunk.

    Returns:
      The activations after layer L - 1, [B, ...].
    """
    P_, M, R = schedule.stages, schedule.microbatches, schedule.repeats
    L = jax.tree.leaves(layers)[0].shape[0]
    check_pipeline(schedule, L, x.shape[0])
    Lc = L // (P_ * R)

    def by_stage(w):  # [L, ...] -> [P, R, Lc, ...]: chunk r * P + s on stage s
        w = w.reshape(R, P_, Lc, *w.shape[1:]).swapaxes(0, 1)
        return _constrain(w, _stage_spec(w.ndim))

    params_P = jax.tree.map(by_stage, layers)
    x_M = _to_microbatches(x, M)
    side_M = jax.tree.map(lambda a: _to_microbatches(a, M), side)
    # Stage 0's buffer of items waiting to enter (microbatch inputs, then finished repeats);
    # every stage carries one so the array shards over `stage` without communication.
    buf_P = _constrain(jnp.broadcast_to(x_M, (P_, *x_M.shape)), _stage_spec(x_M.ndim + 1))
    recv_P = _constrain(jnp.zeros((P_, *x_M.shape[1:]), x.dtype), _stage_spec(x_M.ndim))
    stage_ids = jnp.arange(P_)

    def store(s, t, buf, recv):
        # At stage 0, `recv` is what the last stage finished at iteration t - 1: item t - P.
        k = t - P_
        keep = (s == 0) & (k >= 0) & (k < R * M)
        m = jnp.clip(k, 0, R * M - 1) % M
        old = jax.lax.dynamic_index_in_dim(buf, m, keepdims=False)
        return jax.lax.dynamic_update_index_in_dim(buf, jnp.where(keep, recv, old), m, 0)

    def stage_step(s, p_s, buf, recv, t):
        buf = store(s, t, buf, recv)
        k = jnp.clip(t - s, 0, R * M - 1)  # idle stages compute on a valid index, unused
        m, r = k % M, k // M
        x_in = jnp.where(s == 0, jax.lax.dynamic_index_in_dim(buf, t % M, keepdims=False), recv)
        side_m = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, m, keepdims=False), side_M)
        p_r = jax.tree.map(lambda w: jax.lax.dynamic_index_in_dim(w, r, keepdims=False), p_s)
        return buf, _run_chunk(layer_fn, p_r, x_in, side_m, loop)

    vstep = jax.vmap(stage_step, in_axes=(0, 0, 0, 0, None), spmd_axis_name=STAGE)

    def iteration(carry, t):
        buf, recv = carry
        buf, y = vstep(stage_ids, params_P, buf, recv, t)
        return (buf, _rotate(y)), None

    (buf_P, recv_P), _ = jax.lax.scan(
        iteration, (buf_P, recv_P), jnp.arange(schedule.iterations, dtype=jnp.int32)
    )
    # The last item left the last stage in the final iteration: store it too.
    final = jnp.asarray(schedule.iterations, jnp.int32)
    buf_P = jax.vmap(store, in_axes=(0, None, 0, 0), spmd_axis_name=STAGE)(
        stage_ids, final, buf_P, recv_P
    )
    return _from_microbatches(buf_P[0])


def make_layer_stack(schedule: Schedule, loop: str = "python") -> Callable:
    """The `layer_stack=` hook for a model's apply: `(layer_fn, layers, x, side) -> x`."""

    def layer_stack(layer_fn, layers, x, side):
        return pipeline_stack(layer_fn, layers, x, side, schedule=schedule, loop=loop)

    return layer_stack


def check_pipeline_config(config, sizes, rules) -> Schedule | None:
    """The schedule of a run on a mesh of axis `sizes` (None when `stage` is 1), checked.

    Args:
      config: the run config (`parallel.pipeline`, `model.n_layers`, batch and accumulation).
      sizes: mesh axis name -> size (a `Mesh.shape` or a dict of the resolved config).
      rules: the logical -> mesh rule table (which axes split the batch).

    Raises:
      ValueError: one line naming the field: layers or rows that do not divide, a circular
        schedule with fewer microbatches than stages.
    """
    stages = sizes[STAGE]
    if stages == 1:
        return None
    schedule = schedule_from_config(config.parallel.pipeline, stages)
    rows = config.data.batch_size // config.train.grad_accum
    check_pipeline(schedule, config.model.n_layers, rows)
    if config.model.get("n_decoder_layers"):  # encoder-decoder: both stacks are pipelined
        check_pipeline(schedule, config.model.n_decoder_layers, rows)
    shards = _batch_shards(sizes, rules)
    if (rows // schedule.microbatches) % shards:
        raise ValueError(
            f"parallel.pipeline.microbatches={schedule.microbatches} leaves "
            f"{rows // schedule.microbatches} rows per pipeline microbatch (data.batch_size / "
            f"train.grad_accum / microbatches), not divisible over the {shards} batch shards of "
            "the mesh; change one of them"
        )
    return schedule


def pipelined_apply(model, config, mesh, rules) -> tuple[Schedule | None, Callable]:
    """`(schedule, apply_fn)` for a run: the model's own apply when `stage` is 1, else its apply
    with the layer stack run as the configured pipeline (checked before anything compiles).

    Raises:
      ValueError: the family has no `layer_stack` hook, or layers / rows do not divide.
    """
    if mesh.shape[STAGE] == 1:
        return None, model.apply
    if "layer_stack" not in inspect.signature(model.apply).parameters:
        raise ValueError(
            f"model.family={config.model.family!r} has no layer_stack hook for pipelining; "
            "set parallel.mesh.stage=1"
        )
    schedule = check_pipeline_config(config, mesh.shape, rules)
    stack = make_layer_stack(schedule, config.model.layer_loop)
    return schedule, functools.partial(model.apply, layer_stack=stack)


def _batch_shards(sizes, rules) -> int:
    axes = dict(rules).get("batch")
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return math.prod(sizes[a] for a in axes)
