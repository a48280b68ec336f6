"""LoRA (Hu et al. 2021): low-rank adapters A·B on chosen projections, as a parameter transform.

Model code is unchanged: `merge(base, adapters, cfg)` returns an ordinary parameter tree with
`W + (alpha / rank) * A @ B` in every targeted matrix, and the adapted model is
`apply(merge(stop_gradient(base), adapters), batch)`, so only A and B receive gradients (and the
base weights' gradients are never computed). Merging for inference is the same function, once;
`unmerge` subtracts the update again. Adapters are a small tree of their own, saved alone.

Targets are parameter names (`q`, `k`, `v`, `o`, `wi`, `wi_0`, `wi_1`, `wo`, `cross_q`, ...),
matched as regular expressions against the leaf name (`lora.targets='q,v'` or `'.*'`). A weight's
input dimensions are the leading ones after the stacked `layers` axis (one for every projection
except `o`, whose input is heads x head_dim); B starts at zero, so the adapted model starts equal
to the base model; A is normal with std 1 / sqrt(fan_in).

Dropout: the paper drops the adapter's input activations; a weight-space transform cannot see
activations, so here dropout (`lora.dropout`, training only) zeroes rank components of the update
(rows of A), a fresh mask per step: the same regulariser on the adapter's bottleneck, not on x.
"""

import math
import re
import zlib

import jax
import jax.numpy as jnp
import ml_collections

# leaf name -> number of input dims (after the `layers` axis) of the projection
INPUT_DIMS = {"o": 2, "cross_o": 2}


def default_lora_config() -> ml_collections.ConfigDict:
    """The `adapt.lora` block: rank, alpha, dropout and target names (comma-separated regexes)."""
    return ml_collections.ConfigDict({"rank": 8, "alpha": 16.0, "dropout": 0.0, "targets": "q,v"})


def _targets(lcfg) -> list[re.Pattern]:
    return [re.compile(t.strip()) for t in lcfg.targets.split(",") if t.strip()]


def _walk(tree: dict, prefix: tuple = ()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _walk(v, (*prefix, k))
        else:
            yield (*prefix, k), v


def _get(tree: dict, path: tuple):
    for k in path:
        tree = tree[k]
    return tree


def targeted_paths(params: dict, lcfg) -> list[tuple]:
    """Paths of the matrices that get adapters (norm scales and biases never do)."""
    pats = _targets(lcfg)
    out = []
    for path, w in _walk(params):
        name = path[-1]
        if name.endswith(("_scale", "_bias")) or w.ndim < 2:
            continue
        if any(p.fullmatch(name) for p in pats):
            out.append(path)
    if not out:
        raise ValueError(
            f"adapt.lora.targets={lcfg.targets!r} matches no parameter; use names such as "
            "q, k, v, o, wi, wo"
        )
    return out


def _split(path: tuple, shape: tuple) -> tuple[int, int]:
    """(leading stacked dims, input dims) of a targeted weight."""
    lead = 1 if "layers" in path[:-1] else 0
    return lead, INPUT_DIMS.get(path[-1], 1)


def init(rng: jax.Array, params: dict, lcfg) -> dict:
    """Adapters {path...: {'a': [lead, fan_in, r], 'b': [lead, r, fan_out]}} for `params`."""
    adapters: dict = {}
    for path in targeted_paths(params, lcfg):
        w = _get(params, path)
        lead, n_in = _split(path, w.shape)
        lead_shape = w.shape[:lead]
        fan_in = math.prod(w.shape[lead : lead + n_in])
        fan_out = math.prod(w.shape[lead + n_in :])
        key = jax.random.fold_in(rng, zlib.crc32("/".join(path).encode()))
        a = jax.random.normal(key, (*lead_shape, fan_in, lcfg.rank), jnp.float32) / fan_in**0.5
        b = jnp.zeros((*lead_shape, lcfg.rank, fan_out), jnp.float32)
        node = adapters
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = {"a": a, "b": b}
    return adapters


def delta(w: jax.Array, ab: dict, lcfg, keep_R=None) -> jax.Array:
    """The low-rank update (alpha / rank) * A @ B in the shape (and dtype) of `w`."""
    a, b = ab["a"], ab["b"]
    if keep_R is not None:  # rank-component dropout (training only), inverted scaling
        a = a * keep_R.astype(a.dtype).reshape((1,) * (a.ndim - 1) + keep_R.shape)
    d = jnp.einsum("...ir,...ro->...io", a, b) * (lcfg.alpha / lcfg.rank)
    return d.reshape(w.shape).astype(w.dtype)


def merge(params: dict, adapters: dict, lcfg, *, rng: jax.Array | None = None) -> dict:
    """`params` with every adapted matrix replaced by W + (alpha / rank) A B.

    Args:
      params: base parameters (unboxed).
      adapters: from `init` (or trained).
      lcfg: the `adapt.lora` config.
      rng: a key for rank dropout (None: no dropout, as in evaluation and merging).
    """
    out = jax.tree.map(lambda x: x, params)  # a fresh tree: the caller's stays untouched
    for i, (path, ab) in enumerate(_adapter_items(adapters)):
        keep = None
        if rng is not None and lcfg.dropout > 0:
            key = jax.random.fold_in(rng, i)
            mask = jax.random.bernoulli(key, 1.0 - lcfg.dropout, (lcfg.rank,))
            keep = mask / (1.0 - lcfg.dropout)
        node = out
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = node[path[-1]] + delta(node[path[-1]], ab, lcfg, keep)
    return out


def unmerge(merged: dict, adapters: dict, lcfg) -> dict:
    """The base parameters back from `merge(base, adapters)` (up to float rounding)."""
    out = jax.tree.map(lambda x: x, merged)
    for path, ab in _adapter_items(adapters):
        node = out
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = node[path[-1]] - delta(node[path[-1]], ab, lcfg)
    return out


def _adapter_items(adapters: dict):
    """(path of the adapted weight, {'a', 'b'}) pairs."""

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict) and set(v) == {"a", "b"}:
                yield (*prefix, k), v
            elif isinstance(v, dict):
                yield from walk(v, (*prefix, k))

    yield from walk(adapters, ())
