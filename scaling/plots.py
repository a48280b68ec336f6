"""The report's PNG plots, drawn with matplotlib's object API (Agg canvas, no pyplot state).

Each `plot_*` returns a Figure, or a string saying why the plot is skipped; `write_plots` saves
them atomically and returns what happened to each file.
"""

import os

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from common import atomic
from scaling import allocation, isoflop
from scaling.groups import log_clusters
from scaling.parametric import ParametricFit
from scaling.rows import Points

MAX_CURVES = 6
_SLICE_TOL = 0.01


def _groups(values: np.ndarray) -> list[np.ndarray]:
    """Indices of points sharing a value (within 1%); at most MAX_CURVES log-spaced bins."""
    labels = log_clusters(values, _SLICE_TOL)
    if labels.max() + 1 > MAX_CURVES:
        edges = np.linspace(np.log(values.min()), np.log(values.max()), MAX_CURVES + 1)
        labels = np.clip(np.digitize(np.log(values), edges[1:-1]), 0, MAX_CURVES - 1)
    groups = [np.flatnonzero(labels == k) for k in range(labels.max() + 1)]
    return [g for g in groups if len(g)]


def _log_x(ax) -> None:
    """Log x axis labelled at decades only (minor labels collide on short ranges)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())


def _loss_vs(points: Points, fit: ParametricFit, along: str) -> Figure:
    """Loss against N (one curve per D) or against D (one curve per N), with the fitted law."""
    x, other = (points.params, points.tokens) if along == "N" else (points.tokens, points.params)
    other_name = "D" if along == "N" else "N"
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    colors = matplotlib.colormaps["viridis"](np.linspace(0, 0.9, MAX_CURVES))
    grid = np.geomspace(x.min() / 1.5, x.max() * 1.5, 200)
    for color, g in zip(colors, _groups(other), strict=False):
        at = float(np.exp(np.log(other[g]).mean()))
        ax.scatter(x[g], points.loss[g], color=color, zorder=3, label=f"{other_name} ≈ {at:.3g}")
        n, d = (grid, np.full_like(grid, at)) if along == "N" else (np.full_like(grid, at), grid)
        ax.plot(grid, fit.predict(n, d), color=color, lw=1.2)
    _log_x(ax)
    ax.set_yscale("log")
    # A loss range spans less than a decade: label the minor ticks with plain numbers.
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.2g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2g"))
    label = "non-embedding parameters N" if along == "N" else "training tokens D"
    ax.set_xlabel(label)
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(f"Loss vs {along}; lines: fitted L(N, D) = E + A/N^α + B/D^β")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_isoflop(points: Points, approach2: dict) -> Figure | str:
    """IsoFLOP profiles: loss against N per budget, with the parabola and its minimum."""
    groups = isoflop.profiles(points)
    if not groups:
        return "no IsoFLOP profiles (no budgets and no points sharing C within 5%)"
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    colors = matplotlib.colormaps["plasma"](np.linspace(0, 0.85, len(groups)))
    for color, (c, g), prof in zip(colors, groups, approach2["profiles"], strict=True):
        label = f"C = {c:.3g}" + ("" if prof["coef"] is not None else " (skipped, see report)")
        ax.scatter(points.params[g], points.loss[g], color=color, zorder=3, label=label)
        if prof["coef"] is None:
            order = g[np.argsort(points.params[g])]
            ax.plot(points.params[order], points.loss[order], color=color, lw=0.8, ls=":")
        else:
            n = np.geomspace(points.params[g].min(), points.params[g].max(), 100)
            ax.plot(n, np.polyval(prof["coef"], np.log(n)), color=color, lw=1.2)
            ax.scatter([prof["N_opt"]], [prof["loss_opt"]], color=color, marker="*", s=180)
            ax.scatter([prof["N_opt"]], [prof["loss_opt"]], color="k", marker="*", s=30, zorder=4)
    _log_x(ax)
    ax.set_xlabel("non-embedding parameters N")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("IsoFLOP profiles (parabola in log N; stars: minima)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return fig


def plot_frontier(points: Points, fit: ParametricFit, approach2: dict) -> Figure:
    """N_opt and D_opt against C: approach-2 minima and fit, approach-3 law, beyond the sweep."""
    c_max = points.compute.max()
    c = np.geomspace(points.compute.min(), c_max * allocation.EXTEND, 200)
    n3, d3 = (allocation.compute_optimal(fit, c)[:2]) if fit.is_proper() else (None, None)
    minima = [p for p in approach2["profiles"] if p["N_opt"] is not None]
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    for ax, name, y3, y_pts, key, k, e in (
        (axes[0], "N", n3, points.params, "N_opt", approach2["k_N"], approach2["a"]),
        (axes[1], "D", d3, points.tokens, "D_opt", approach2["k_D"], approach2["b"]),
    ):
        ax.scatter(points.compute, y_pts, color="0.75", s=12, label="sweep points")
        if y3 is not None:
            ax.plot(c, y3, color="C0", label="approach 3 (fitted law)")
        if minima:
            ax.scatter(
                [p["C"] for p in minima],
                [p[key] for p in minima],
                color="C3",
                marker="*",
                s=120,
                zorder=3,
                label="approach 2 minima",
            )
        if e is not None:
            ax.plot(c, k * c**e, color="C3", ls="--", label=f"approach 2: ∝ C^{e:.3f}")
        ax.axvspan(c_max, c[-1], color="0.9", zorder=0, label="beyond the sweep")
        _log_x(ax)
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.set_ylabel(f"compute-optimal {name}")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Compute-optimal frontier (approach 3: D_opt = C / 6 N_opt)")
    return fig


def plot_residuals(points: Points, fit: ParametricFit) -> Figure:
    """Relative residuals of the approach-3 fit against C, N and D."""
    predicted = fit.predict(points.params, points.tokens)
    resid = 100 * (points.loss - predicted) / predicted
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 3, sharey=True)
    for ax, x, label in (
        (axes[0], points.compute, "training compute C (FLOPs)"),
        (axes[1], points.params, "non-embedding parameters N"),
        (axes[2], points.tokens, "training tokens D"),
    ):
        ax.scatter(x, resid, s=16)
        ax.axhline(0.0, color="k", lw=0.8)
        _log_x(ax)
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("(observed − fitted) / fitted loss (%)")
    fig.suptitle("Approach-3 residuals")
    return fig


def write_plots(out_dir: str, points: Points, fit: ParametricFit, approach2: dict) -> dict:
    """Draws and atomically saves every plot in `out_dir`.

    Returns:
      File name -> "written" or "skipped: <reason>".
    """
    figures = {
        "loss_vs_params.png": _loss_vs(points, fit, "N"),
        "loss_vs_tokens.png": _loss_vs(points, fit, "D"),
        "isoflop.png": plot_isoflop(points, approach2),
        "frontier.png": plot_frontier(points, fit, approach2),
        "residuals.png": plot_residuals(points, fit),
    }
    status = {}
    for name, fig in figures.items():
        path = os.path.join(out_dir, name)
        if isinstance(fig, str):
            if atomic.exists(path):  # A stale plot from an earlier fit would contradict fit.json.
                atomic.remove(path)
            status[name] = f"skipped: {fig}"
            continue
        atomic.save_figure(fig, path)
        status[name] = "written"
    return status
