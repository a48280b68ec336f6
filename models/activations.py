"""The activations a model tags with `checkpoint_name`, read without a hook in the model's code.

`record_named` evaluates the jaxpr of a function with an interpreter that keeps the value of every
`name` equation (what `jax.ad_checkpoint.checkpoint_name` traces to), so any family that tags its
activations (q, k, v, the attention output, the MLP pre-activation, per layer) can be inspected;
muP's coordinate check (experiments/coord_check.py) reads their mean |x| across widths.
"""

import jax
import jax.extend.core as jcore
import jax.numpy as jnp


def record_named(fn, *args):
    """Calls `fn(*args)` and also returns the values of its `checkpoint_name` tags.

    Returns:
      (outputs of fn, [(name, value), ...] in the order the tags were traced).
    """
    closed = jax.make_jaxpr(fn)(*args)
    out_tree = jax.tree.structure(jax.eval_shape(fn, *args))
    recorded = []

    def run(jaxpr, consts, flat):
        env = dict(zip(jaxpr.constvars, consts, strict=True)) | dict(
            zip(jaxpr.invars, flat, strict=True)
        )
        read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
        for eqn in jaxpr.eqns:
            with eqn.ctx.manager:  # as jax.core.eval_jaxpr (jax 0.10: no subfuns)
                params = eqn.primitive.get_bind_params(eqn.params)
                outs = eqn.primitive.bind(*map(read, eqn.invars), **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
            if eqn.primitive.name == "name":
                recorded.append((eqn.params["name"], outs[0]))
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(v) for v in jaxpr.outvars]

    flat = run(closed.jaxpr, closed.consts, jax.tree.leaves(args))
    return jax.tree.unflatten(out_tree, flat), recorded


def mean_abs(apply_fn, params, batch: dict, cfg) -> dict[str, float]:
    """{label: mean |x|} of `apply_fn(params, batch, cfg)`'s tagged activations and its logits.

    Labels are `L<layer>/<tag>` (a tag traced several times in a layer, such as 'qkv', is split
    into q, k and v in that order) and `logits`. Layers run as a Python loop here, so each
    layer's tags are separate equations of the top-level jaxpr.
    """
    cfg = cfg.copy_and_resolve_references()
    cfg.layer_loop = "python"
    names = []  # filled while `forward` is traced (names are static)

    def forward(params, batch):
        logits, named = record_named(lambda p: apply_fn(p, batch, cfg), params)
        names.extend(name for name, _ in named)
        size = lambda x: jnp.abs(x.astype(jnp.float32)).mean()
        return size(logits), [size(v) for _, v in named]

    logits, values = jax.device_get(jax.jit(forward)(params, batch))
    out, per_layer = {}, len(names) // cfg.n_layers
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        layer, j = divmod(i, per_layer)
        chunk = names[layer * per_layer : (layer + 1) * per_layer]
        if chunk.count(name) > 1:
            k = chunk[:j].count(name)
            name = "qkv"[k] if name == "qkv" else f"{name}{k}"
        out[f"L{layer}/{name}"] = float(value)
    out["logits"] = float(logits)
    return out
