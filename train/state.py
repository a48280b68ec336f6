"""Train state and its sharded creation: abstract first, then materialised sharded.

`jax.eval_shape(model.init)` gives the logical axes of every parameter; the rule table maps them to
mesh axes; optimizer-state shardings mirror the parameters'; `jax.jit(init, out_shardings=...)` then
builds every array directly in its shards, so full parameters never exist on one device.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from parallel.sharding import check_divisible, named_shardings


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: optimizer updates done
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32 key data, so checkpoints hold plain arrays
    # int32[3]: updates skipped for a non-finite loss or gradient, the last such step (-1: none)
    # and its cause (1 loss, 2 gradient norm); kept on device so that detection needs no sync.
    nonfinite: jax.Array = dataclasses.field(default_factory=lambda: np.array([0, -1, 0], np.int32))


def _is_spec(x) -> bool:
    return isinstance(x, P)


def _opt_specs_by_path(abstract_opt_state, param_specs):
    """Optimizer-state specs: a leaf whose trailing dict-key path is a parameter takes its spec."""
    specs = {
        tuple(k.key for k in path): spec
        for path, spec in jax.tree_util.tree_leaves_with_path(param_specs, is_leaf=_is_spec)
    }

    def spec_of(path, leaf):
        keys = []
        for k in reversed(path):
            if not isinstance(k, jax.tree_util.DictKey):
                break
            keys.insert(0, k.key)
        spec = specs.get(tuple(keys))
        return spec if spec is not None and len(spec) <= leaf.ndim else P()

    return jax.tree_util.tree_map_with_path(spec_of, abstract_opt_state)


def _init_fn(model, model_cfg, optimizer):
    def init_fn(key_data):
        key = jax.random.wrap_key_data(key_data)
        params_key, train_key = jax.random.split(key)
        params = nn.unbox(model.init(params_key, model_cfg))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(train_key),
            nonfinite=jnp.array([0, -1, 0], jnp.int32),
        )

    return init_fn


def train_state_shardings(
    model, model_cfg, optimizer: optax.GradientTransformation, mesh: Mesh, rules, seed: int
) -> tuple[TrainState, TrainState]:
    """The abstract train state (ShapeDtypeStructs carrying shardings) and its shardings.

    Nothing is allocated. Call it outside `jax.set_mesh`: optax's `tree_map_params` runs its
    `init` eagerly, which fails under a mesh of compile-only (AOT) devices.

    Raises:
      ValueError: a parameter dimension is not divisible by the mesh axes its rule names.
    """
    key_data = jax.random.key_data(jax.random.key(seed))
    boxed = jax.eval_shape(lambda k: model.init(jax.random.wrap_key_data(k), model_cfg), key_data)
    param_specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
    abstract = jax.eval_shape(_init_fn(model, model_cfg, optimizer), key_data)
    check_divisible(abstract.params, param_specs, mesh)
    try:
        opt_specs = optax.tree_utils.tree_map_params(
            optimizer,
            lambda _, spec: spec,
            abstract.opt_state,
            param_specs,
            transform_non_params=lambda _: P(),
            is_leaf=_is_spec,
        )
    except ValueError:  # states tree_map_params cannot walk (multi_transform MaskedNodes)
        opt_specs = _opt_specs_by_path(abstract.opt_state, param_specs)
    specs = TrainState(step=P(), params=param_specs, opt_state=opt_specs, rng=P(), nonfinite=P())
    shardings = named_shardings(specs, mesh)
    return abstract_with_shardings(shardings, abstract), shardings


def create_train_state(
    model, model_cfg, optimizer: optax.GradientTransformation, mesh: Mesh, rules, seed: int
) -> tuple[TrainState, TrainState]:
    """Builds the sharded initial state: abstract first, then materialised in its shards.

    Returns:
      (state, state_shardings): `state_shardings` is a TrainState of NamedShardings for jit
      in/out shardings and checkpoint restore.
    """
    _, shardings = train_state_shardings(model, model_cfg, optimizer, mesh, rules, seed)
    return materialize(model, model_cfg, optimizer, shardings, seed), shardings


def materialize(
    model, model_cfg, optimizer: optax.GradientTransformation, shardings: TrainState, seed: int
) -> TrainState:
    """The initial state built directly in its shards (`jax.jit(init, out_shardings=...)`)."""
    key_data = jax.random.key_data(jax.random.key(seed))
    init_fn = _init_fn(model, model_cfg, optimizer)
    return jax.jit(init_fn, out_shardings=shardings)(key_data)


def abstract_with_shardings(state_shardings: TrainState, abstract_state: TrainState) -> TrainState:
    """ShapeDtypeStructs carrying shardings: the restore target for checkpoints."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        abstract_state,
        state_shardings,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
