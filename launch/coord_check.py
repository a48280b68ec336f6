r"""muP coordinate check: mean |activation| per layer after a few large-LR steps, across widths.

  python launch/coord_check.py --widths 32,64,128 --lr 0.02 --steps 4 --out runs/coord_check

trains a 2-layer decoder of each width for `--steps` Adam steps (constant LR, no clipping, no
weight decay) on byte windows of the stdlib's source, under the standard parametrization (SP) and
under muP (base width = the smallest), then records the mean |x| of every activation the model
tags with `checkpoint_name` (q, k, v, the attention output, the MLP pre-activation, per layer)
and of the output logits. It prints one table per parametrization, the slope of
log(mean |x|) against log(width) per activation, and saves `coord_check.json` and
`coord_check.png` in `--out`. Under muP the curves are flat (slopes near 0); under SP they grow
with width (TP5, Yang et al. 2022, Fig. 5).

The activations are read by evaluating the jaxpr of `apply` with an interpreter that records the
values of `checkpoint_name` equations, so any family that tags its activations is checked without
a hook in its code.
"""

import os

import numpy as np

PARAMETRIZATIONS = ("sp", "mup")


def record_named(fn, *args):
    """Calls `fn(*args)` and also returns the values of its `checkpoint_name` tags.

    Returns:
      (outputs of fn, [(name, value), ...] in the order the tags were traced).
    """
    import jax
    import jax.extend.core as jcore

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


def width_config(width: int, parametrization: str, base_width: int, n_layers: int = 2):
    """A decoder of `width` (4 heads, d_ff = 4 width, untied readout) under SP or muP."""
    from models.sizes import default_model_config

    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization={parametrization!r}; use one of {PARAMETRIZATIONS}")
    cfg = default_model_config("tiny")
    cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.n_heads = n_layers, width, 4 * width, 4
    cfg.tie_embeddings = False
    cfg.vocab_size = 256
    cfg.mup = parametrization == "mup"
    cfg.mup_base_width = base_width
    return cfg


def _text_batches(steps: int, batch: int, seq: int, seed: int = 0) -> list[np.ndarray]:
    with open(os.__file__, "rb") as f:
        ids = np.frombuffer(f.read(), np.uint8).astype(np.int32)
    rng = np.random.default_rng(seed)
    return [
        np.stack([ids[s : s + seq] for s in rng.integers(0, len(ids) - seq, batch)])
        for _ in range(steps + 1)
    ]


def activations(cfg, *, lr: float, steps: int, batch: int = 8, seq: int = 64, seed: int = 0):
    """{activation label: mean |x|} after `steps` Adam steps of `cfg` at constant `lr`.

    Labels are `L<layer>/<tag>` for the tagged activations (q, k, v, attn_out, mlp_in) and
    `logits` for the output, read on one held-back batch.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from models import decoder
    from objectives.causal_lm import make_loss_fn
    from train.optim import default_train_config, make_optimizer, schedule_args
    from train.state import TrainState
    from train.step import make_train_step

    cfg = cfg.copy_and_resolve_references()
    cfg.layer_loop = "python"  # tags are recorded per layer at the top level of the jaxpr
    tcfg = default_train_config()
    tcfg.lr, tcfg.schedule, tcfg.warmup_steps, tcfg.steps = lr, "constant", 0, steps
    tcfg.clip_norm, tcfg.weight_decay = 0.0, 0.0
    opt = make_optimizer(tcfg, cfg)
    params = jax.jit(lambda key: nn.unbox(decoder.init(key, cfg)))(jax.random.key(seed))
    state = TrainState(
        step=jnp.int32(0),
        params=params,
        opt_state=opt.init(params),
        rng=jax.random.key_data(jax.random.key(seed + 1)),
    )
    step_fn = jax.jit(make_train_step(make_loss_fn(cfg, decoder.apply), opt))
    *train, probe = _text_batches(steps, batch, seq, seed)
    for tokens in train:
        state, _ = step_fn(state, {"tokens": tokens}, schedule_args(tcfg))

    names = []  # filled while `forward` is traced (names are static)

    def forward(params, tokens):
        logits, named = record_named(lambda p: decoder.apply(p, {"tokens": tokens}, cfg), params)
        names.extend(name for name, _ in named)
        mean_abs = lambda x: jnp.abs(x.astype(jnp.float32)).mean()
        return mean_abs(logits), [mean_abs(v) for _, v in named]

    logits, values = jax.device_get(jax.jit(forward)(state.params, probe))
    out, per_layer = {}, len(names) // cfg.n_layers
    for i, (name, value) in enumerate(zip(names, values, strict=True)):
        layer, j = divmod(i, per_layer)
        chunk = names[layer * per_layer : (layer + 1) * per_layer]
        if chunk.count(name) > 1:  # 'qkv' tags q, k and v in that order
            k = chunk[:j].count(name)
            name = "qkv"[k] if name == "qkv" else f"{name}{k}"
        out[f"L{layer}/{name}"] = float(value)
    out["logits"] = float(logits)
    return out


def slopes(table: dict[int, dict[str, float]]) -> dict[str, float]:
    """Least-squares slope of log(mean |x|) against log(width), per activation label."""
    widths = sorted(table)
    log_w = np.log(widths)
    return {
        label: float(np.polyfit(log_w, np.log([table[w][label] for w in widths]), 1)[0])
        for label in table[widths[0]]
    }


def coord_check(widths, *, lr: float, steps: int, n_layers: int = 2, **kwargs) -> dict:
    """Both parametrizations: {'sp'|'mup': {'table': {width: {label: value}}, 'slopes': ...}}."""
    base = min(widths)
    result = {}
    for parametrization in PARAMETRIZATIONS:
        table = {
            w: activations(
                width_config(w, parametrization, base, n_layers), lr=lr, steps=steps, **kwargs
            )
            for w in widths
        }
        result[parametrization] = {"table": table, "slopes": slopes(table)}
    return result


def plot(result: dict, path: str) -> None:
    """One panel per parametrization: mean |x| against width, one line per activation."""
    from matplotlib.figure import Figure

    from common import atomic

    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, len(result), sharey=True)
    for ax, (name, r) in zip(axes, result.items(), strict=True):
        widths = sorted(r["table"])
        for label in r["table"][widths[0]]:
            ax.plot(widths, [r["table"][w][label] for w in widths], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (d_model)")
        ax.set_title(f"{name.upper()}: mean |activation| after training")
    axes[0].set_ylabel("mean |x|")
    axes[-1].legend(fontsize=7, ncol=2)
    atomic.save_figure(fig, path)


def main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="32,64,128")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", default="runs/coord_check")
    args = p.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    result = coord_check(widths, lr=args.lr, steps=args.steps)
    for name, r in result.items():
        print(f"{name.upper()} (lr {args.lr}, {args.steps} steps): mean |x| per width")
        labels = list(r["table"][widths[0]])
        print(f"{'activation':<14}" + "".join(f"{w:>10}" for w in widths) + f"{'slope':>8}")
        for label in labels:
            row = "".join(f"{r['table'][w][label]:>10.3g}" for w in widths)
            print(f"{label:<14}{row}{r['slopes'][label]:>8.2f}")
    from common import atomic

    os.makedirs(args.out, exist_ok=True)
    atomic.write_json(os.path.join(args.out, "coord_check.json"), result)
    plot(result, os.path.join(args.out, "coord_check.png"))
    print(f"wrote {args.out}/coord_check.json and coord_check.png")


if __name__ == "__main__":
    main()
