"""The runs and analyses of the two muP studies.

LR transfer (experiments/mup_transfer.py): every (parametrization, width, log2 LR, seed) is one
run; `transfer_points` averages a point's seeds, `optima` picks the best LR per width, and
`plot_transfer` draws loss against LR per width. Coordinate check (experiments/coord_check.py):
`slopes` fits log(mean |x|) against log(width) per activation and `plot_coords` draws them.
"""

import math

import numpy as np
from matplotlib.figure import Figure

from common import atomic
from studies.stages import run_config

PARAMETRIZATIONS = ("sp", "mup")
_MEANS = ("eval/loss", "eval/bits_per_byte")


def width_run(config, block: str, parametrization: str, width: int):
    """A run of the study `config` (without its `block`): d_model `width`, d_ff 4x, SP or muP."""
    c = run_config(config, block)
    c.model.d_model, c.model.d_ff = width, 4 * width
    c.model.mup.enabled = parametrization == "mup"
    return c


def transfer_points(members: list[dict], rows: dict[str, dict]) -> list[dict]:
    """One row per (parametrization, width, lr_exp): `eval_loss` and `bits_per_byte` averaged over
    the seeds, `seed_losses`; status 'diverged' (no loss) if a seed's member has no 'ok' row in
    `rows` (members: dicts with `stage`, `parametrization`, `width`, `lr_exp`)."""
    groups: dict = {}
    for m in members:
        key = (m["parametrization"], m["width"], m["lr_exp"])
        groups.setdefault(key, []).append(rows.get(m["stage"], {}))
    out = []
    for (p, w, e), runs in groups.items():
        losses = [r.get("eval/loss") for r in runs]
        ok = all(x is not None and math.isfinite(x) for x in losses)
        mean = {k: float(np.mean([r[k] for r in runs])) if ok else None for k in _MEANS}
        point = dict(id=f"{p}_d{w}_lr2e{e}", parametrization=p, width=w, lr_exp=e, lr=2.0**e)
        point.update(status="ok" if ok else "diverged", eval_loss=mean["eval/loss"])
        point["bits_per_byte"] = mean["eval/bits_per_byte"]
        point["seed_losses"] = [x if x is not None and math.isfinite(x) else None for x in losses]
        out.append(point)
    return out


def optima(points: list[dict]) -> dict[str, dict[int, int]]:
    """{parametrization: {width: log2 of the best LR}} over finished (finite-loss) points."""
    best: dict = {}
    for r in points:
        if r["status"] != "ok" or not math.isfinite(r["eval_loss"]):
            continue
        cur = best.setdefault(r["parametrization"], {}).get(r["width"])
        if cur is None or r["eval_loss"] < cur[1]:
            best[r["parametrization"]][r["width"]] = (r["lr_exp"], r["eval_loss"])
    return {p: {w: v[0] for w, v in sorted(ws.items())} for p, ws in best.items()}


def plot_transfer(points: list[dict], path: str) -> None:
    """Held-out loss against log2 LR, one curve per width; SP and muP side by side."""
    import matplotlib

    order = {"sp": 0, "mup": 1}
    params = sorted({r["parametrization"] for r in points}, key=lambda p: (order.get(p, 2), p))
    widths = sorted({r["width"] for r in points})
    colors = matplotlib.colormaps["viridis"](
        [0.1 + 0.8 * i / max(1, len(widths) - 1) for i in range(len(widths))]
    )
    fig = Figure(figsize=(4.6 * len(params) + 1, 4.4), layout="constrained")
    axes = fig.subplots(1, len(params), sharey=True, squeeze=False)[0]
    best = optima(points)
    ok = [r for r in points if r["status"] == "ok"]
    for ax, p in zip(axes, params, strict=True):
        for w, color in zip(widths, colors, strict=True):
            mine = sorted(
                (r for r in ok if r["parametrization"] == p and r["width"] == w),
                key=lambda r: r["lr_exp"],
            )
            if not mine:
                continue
            xs, ys = [r["lr_exp"] for r in mine], [r["eval_loss"] for r in mine]
            ax.plot(xs, ys, marker="o", color=color, label=f"d_model {w}")
            spread = [r for r in mine if len(r["seed_losses"]) > 1]  # the range over seeds
            if spread:
                lo, hi = ([f(r["seed_losses"]) for r in spread] for f in (min, max))
                ax.fill_between([r["lr_exp"] for r in spread], lo, hi, color=color, alpha=0.2)
            if w in best.get(p, {}):
                e = best[p][w]
                ax.plot([e], [ys[xs.index(e)]], marker="*", markersize=16, color=color)
        ax.set_xlabel("log2 learning rate")
        ax.set_title(p.upper())
        ax.grid(alpha=0.3)
    if ok:
        lo = min(r["eval_loss"] for r in ok)
        axes[0].set_ylim(lo - 0.05, min(max(r["eval_loss"] for r in ok), lo + 1.5))
    axes[0].set_ylabel("eval loss (nats/token)")
    axes[-1].legend()
    fig.suptitle("Held-out loss against learning rate per width (star: best LR; band: seed range)")
    atomic.save_figure(fig, path)


def slopes(table: dict[int, dict[str, float]]) -> dict[str, float]:
    """Least-squares slope of log(mean |x|) against log(width), per activation label."""
    widths = sorted(table)
    log_w = np.log(widths)
    return {
        label: float(np.polyfit(log_w, np.log([table[w][label] for w in widths]), 1)[0])
        for label in table[widths[0]]
    }


def plot_coords(result: dict, path: str) -> None:
    """One panel per parametrization: mean |x| against width, one line per activation."""
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, len(result), sharey=True, squeeze=False)[0]
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
