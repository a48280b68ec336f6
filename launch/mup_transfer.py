r"""Runs an LR x width transfer grid (experiments/mup_transfer.py), records it and plots it.

  python launch/mup_transfer.py --config experiments/mup_transfer.py --workdir runs/mup_transfer

All LRs of one (parametrization, width) train together: the parameters and Adam state of every
LR are stacked and the train step is `jax.vmap`ped over them, on the same batches, so the grid
compiles once per (parametrization, width) instead of once per point. Each member's schedule is
the config's at its own peak LR (`train.optim.schedule_args`, a runtime argument), so a member
is exactly the run `launch/run.py` would do at that LR (tests/test_launch_mup_transfer.py). The
data pipeline, model, loss, schedule and optimizer are the project's own (`train.loop.Run`'s
parts, unsharded).

With `seeds=N` every point also trains N times with its own initialisation and data order (the
seeds are more members of the same vmap); a point's loss is the mean over seeds, and the plot
shades the range between the seeds.

`results.jsonl` gets one line per point, rewritten atomically after each (parametrization,
width), so a killed grid resumes there; a member whose loss becomes non-finite is recorded as
diverged. The plot and the optima are redone at the end.
"""

import json
import math
import os
import time

from absl import app, flags, logging

_FLAGS = {}  # defined when run as a script, so that tests can import this module's functions


def _define_flags() -> None:
    from ml_collections import config_flags

    _FLAGS["config"] = config_flags.DEFINE_config_file(
        "config", "experiments/mup_transfer.py", "Experiment config file[:args].", lock_config=True
    )
    _FLAGS["workdir"] = flags.DEFINE_string("workdir", "runs/mup_transfer", "Grid directory.")
    _FLAGS["merge_from"] = flags.DEFINE_list(
        "merge_from",
        [],
        "Other grid workdirs (same model and training config, other LRs or widths) whose "
        "results.jsonl rows join this grid's plot and optima.",
    )
    _FLAGS["compile_cache"] = flags.DEFINE_string(
        "compile_cache",
        os.path.expanduser("~/.cache/scalelab/jax"),
        "JAX compilation cache ('' off).",
    )


def point_id(parametrization: str, width: int, lr_exp: int) -> str:
    return f"{parametrization}_d{width}_lr2e{lr_exp}"


def optima(rows: list[dict]) -> dict[str, dict[int, int]]:
    """{parametrization: {width: log2 of the best LR}} over finished (finite-loss) points."""
    best: dict = {}
    for r in rows:
        if r["status"] != "ok":
            continue
        cur = best.setdefault(r["parametrization"], {}).get(r["width"])
        if cur is None or r["eval_loss"] < cur[1]:
            best[r["parametrization"]][r["width"]] = (r["lr_exp"], r["eval_loss"])
    return {p: {w: v[0] for w, v in sorted(ws.items())} for p, ws in best.items()}


def plot(rows: list[dict], path: str) -> None:
    """Held-out loss against log2 LR, one curve per width; SP and muP side by side."""
    import matplotlib
    from matplotlib.figure import Figure

    from common import atomic

    order = {"sp": 0, "mup": 1}  # then any merged variants, by name
    params = sorted({r["parametrization"] for r in rows}, key=lambda p: (order.get(p, 2), p))
    widths = sorted({r["width"] for r in rows})
    colors = matplotlib.colormaps["viridis"](
        [0.1 + 0.8 * i / max(1, len(widths) - 1) for i in range(len(widths))]
    )
    fig = Figure(figsize=(4.6 * len(params) + 1, 4.4), layout="constrained")
    axes = fig.subplots(1, len(params), sharey=True)
    axes = axes if len(params) > 1 else [axes]
    best = optima(rows)
    finite = [r["eval_loss"] for r in rows if r["status"] == "ok"]
    for ax, p in zip(axes, params, strict=True):
        for w, color in zip(widths, colors, strict=True):
            pts = sorted(
                (r["lr_exp"], r["eval_loss"])
                for r in rows
                if r["parametrization"] == p and r["width"] == w and r["status"] == "ok"
            )
            if not pts:
                continue
            ax.plot(*zip(*pts, strict=True), marker="o", color=color, label=f"d_model {w}")
            spread = sorted(  # the range over seeds, where a point has several
                (r["lr_exp"], min(r["seed_losses"]), max(r["seed_losses"]))
                for r in rows
                if r["parametrization"] == p
                and r["width"] == w
                and r["status"] == "ok"
                and len(r.get("seed_losses") or ()) > 1
            )
            if spread:
                ax.fill_between(*zip(*spread, strict=True), color=color, alpha=0.2, lw=0)
            if w in best.get(p, {}):
                e = best[p][w]
                ax.plot([e], [dict(pts)[e]], marker="*", markersize=16, color=color)
        ax.set_xlabel("log2 learning rate")
        ax.set_title(p.upper() if p in order else p)
        ax.grid(alpha=0.3)
    if finite:
        lo = min(finite)
        axes[0].set_ylim(lo - 0.05, min(max(finite), lo + 1.5))
    axes[0].set_ylabel("eval loss (nats/token)")
    axes[-1].legend()
    fig.suptitle("Held-out loss against learning rate per width (star: best LR; band: seed range)")
    atomic.save_figure(fig, path)


def train_lr_group(config, lrs: list[float], seeds: int = 1) -> list[list[tuple[float, float]]]:
    """Trains `config` at every LR in `lrs` and every seed at once (vmapped over seeds x LRs).

    Seed s (`config.seed + s`) sets both the initialisation and the order of the training data.
    Returns (eval loss, bits/byte) as `out[s][i]` for seed s and `lrs[i]`.
    """
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import objectives
    from data.pipeline import (
        BATCH_KEYS,
        make_eval_batches,
        make_train_iterator,
        tokenizer_from_config,
    )
    from models import get_model
    from train.optim import lr_at, make_optimizer, schedule_args

    c = config.copy_and_resolve_references()
    model = get_model(c.model.family)
    tokenizer = tokenizer_from_config(c.data)
    loss_fn = objectives.get_loss_fn(c.objective)(
        c.model, model.apply, bytes_per_token=tokenizer.bytes_per_token
    )
    opt = make_optimizer(c.train, c.model)

    def init(key):
        params = nn.unbox(model.init(key, c.model))
        return params, opt.init(params)

    def step(params, opt_state, schedule, seed_index, t, batch_S):
        batch = jax.tree.map(lambda x: x[seed_index], batch_S)  # this member's seed's batch
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, None)
        updates, opt_state = opt.update(grads, opt_state, params, lr=lr_at(t, schedule))
        return optax.apply_updates(params, updates), opt_state, aux["nll_sum"] / aux["tokens"]

    def evaluate(params, batch):
        return loss_fn(params, batch, None)[1]

    n_lr = len(lrs)
    n = seeds * n_lr  # member i is seed i // n_lr at lrs[i % n_lr]
    seed_n = np.repeat(np.arange(seeds), n_lr)
    keys_n = jax.vmap(lambda s: jax.random.key(c.seed + s))(jnp.asarray(seed_n))
    params, opt_state = jax.jit(jax.vmap(init))(keys_n)
    schedules = []  # each member's schedule: the config's at its own peak LR
    for lr in lrs:
        with c.train.unlocked():
            c.train.lr = lr
        schedules.append(schedule_args(c.train))
    schedule_n = jnp.asarray(np.tile(np.stack(schedules), (seeds, 1)))
    seed_n = jnp.asarray(seed_n, jnp.int32)
    step_n = jax.jit(jax.vmap(step, in_axes=(0, 0, 0, 0, None, None)), donate_argnums=(0, 1))
    eval_n = jax.jit(jax.vmap(evaluate, in_axes=(0, None)))
    iters = [make_train_iterator(c.data, seed=c.seed + s) for s in range(seeds)]
    t0, every = time.perf_counter(), max(1, c.train.steps // 5)
    for i in range(c.train.steps):
        bs = [next(it) for it in iters]
        batch_S = {k: jnp.asarray(np.stack([b[k] for b in bs])) for k in bs[0] if k in BATCH_KEYS}
        params, opt_state, loss_n = step_n(params, opt_state, schedule_n, seed_n, i, batch_S)
        if (i + 1) % every == 0 or i == 0:
            done, wall = i + 1, time.perf_counter() - t0
            tokens = n * c.data.batch_size * c.data.seq_len * done
            print(
                f"  step {done}/{c.train.steps}: lowest member loss "
                f"{np.nanmin(np.asarray(loss_n)):.3f}, {tokens / wall:,.0f} tokens/s, "
                f"ETA {wall / done * (c.train.steps - done):.0f} s",
                flush=True,
            )
    sums = {"nll_sum": np.zeros(n), "tokens": np.zeros(n), "bytes": np.zeros(n)}
    for b in make_eval_batches(c.data, num_batches=c.train.eval_batches):
        aux = jax.device_get(
            eval_n(params, {k: jnp.asarray(v) for k, v in b.items() if k in BATCH_KEYS})
        )
        for k in sums:
            sums[k] += np.asarray(aux[k], np.float64)
    out = [[] for _ in range(seeds)]
    for i in range(n):
        s = objectives.summarize({k: v[i] for k, v in sums.items()})
        out[i // n_lr].append((s["loss"], s["bits_per_byte"]))
    return out


def main(argv):
    del argv
    import jax
    import numpy as np

    logging.set_verbosity(logging.WARNING)
    cache = _FLAGS["compile_cache"].value
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from common import atomic
    from experiments.mup_transfer import point_config
    from train.loop import claim_workdir

    config, workdir = _FLAGS["config"].value, _FLAGS["workdir"].value
    claim_workdir(workdir, config, "transfer grid")
    results_path = os.path.join(workdir, "results.jsonl")
    rows = {}
    if os.path.exists(results_path):
        with open(results_path) as f:
            rows = {r["id"]: r for r in map(json.loads, f)}
    exps = list(config.transfer.lr_exps)
    t0 = time.perf_counter()
    for w in config.transfer.widths:  # width-major: a partial grid compares SP and muP
        for p in config.transfer.parametrizations:
            if all(point_id(p, w, e) in rows for e in exps):
                continue
            t = time.perf_counter()
            per_seed = train_lr_group(
                point_config(config, p, w, 0), [2.0**e for e in exps], config.transfer.seeds
            )
            wall = time.perf_counter() - t
            for j, e in enumerate(exps):
                seed_losses = [per_seed[s][j][0] for s in range(len(per_seed))]
                loss = float(np.mean(seed_losses))
                bpb = float(np.mean([per_seed[s][j][1] for s in range(len(per_seed))]))
                ok = math.isfinite(loss)
                rows[point_id(p, w, e)] = dict(
                    id=point_id(p, w, e),
                    parametrization=p,
                    width=w,
                    lr_exp=e,
                    lr=2.0**e,
                    status="ok" if ok else "diverged",
                    eval_loss=loss if ok else None,
                    bits_per_byte=bpb if ok else None,
                    seed_losses=[x if math.isfinite(x) else None for x in seed_losses],
                    group_wall_s=wall,
                )
            atomic.write_text(results_path, "".join(json.dumps(r) + "\n" for r in rows.values()))
            line = " ".join(
                f"2^{e}:{rows[point_id(p, w, e)]['eval_loss'] or float('nan'):.3f}" for e in exps
            )
            total = time.perf_counter() - t0
            print(f"{p} d_model {w}: {line} ({wall:.0f} s, {total:.0f} s total)", flush=True)
    for other in _FLAGS["merge_from"].value:
        with open(os.path.join(other, "results.jsonl")) as f:
            rows.update({r["id"]: r for r in map(json.loads, f) if r["id"] not in rows})
    rows_list = list(rows.values())
    plot(rows_list, os.path.join(workdir, "mup_transfer.png"))
    best = optima(rows_list)
    atomic.write_json(
        os.path.join(workdir, "optima.json"),
        {p: {str(w): e for w, e in ws.items()} for p, ws in best.items()},
    )
    for p, ws in best.items():
        spread = max(ws.values()) - min(ws.values())
        print(f"{p.upper()}: best log2 LR per width {ws} (spread {spread} grid step(s))")
    print(f"wrote {results_path}, {workdir}/mup_transfer.png and optima.json")


if __name__ == "__main__":
    _define_flags()
    app.run(main)
