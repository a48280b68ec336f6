"""`report.md`: the sweep, every run, the fitted laws beside published ones, allocation, checks."""

import json
from typing import Any

import numpy as np

from scaling import published
from scaling.groups import log_clusters
from scaling.rows import compute_of, is_ok

PLOTS = {
    "loss_vs_params.png": "Loss vs non-embedding parameters, one curve per D",
    "loss_vs_tokens.png": "Loss vs training tokens, one curve per N",
    "isoflop.png": "IsoFLOP profiles",
    "frontier.png": "Compute-optimal N and D vs C",
    "residuals.png": "Approach-3 residuals",
}
_META_LABELS = {
    "command": "Command",
    "machine": "Machine",
    "schedule": "Schedule",
    "n_parameter_definition": "N (parameter count)",
    "loss": "Loss",
}


def fmt(x: Any, digits: int = 4) -> str:
    """A number for a table: None as an em dash, floats to `digits` significant figures."""
    if x is None:
        return "—"
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x).replace("|", "\\|").replace("\n", " ")
    if isinstance(x, int) and abs(x) < 10**6:
        return str(x)
    return f"{x:.{digits}g}"


def _ci(interval: list[float] | None) -> str:
    return "—" if interval is None else f"[{fmt(interval[0])}, {fmt(interval[1])}]"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]


def _meta(meta: dict) -> list[str]:
    lines = []
    for key, value in meta.items():
        if key in ("title", "grid"):
            continue
        label = _META_LABELS.get(key, key.replace("_", " ").capitalize())
        text = f"`{value}`" if key == "command" else fmt(value)
        lines.append(f"- **{label}**: {text}")
    return lines


def _values(values: list[float]) -> str:
    """Distinct values (within 1%): all of them if few, else their count and range."""
    distinct = sorted(
        values[i] for i in np.unique(log_clusters(np.array(values), 0.01), return_index=True)[1]
    )
    if len(distinct) <= 8:
        return f"{len(distinct)}: " + ", ".join(fmt(v, 3) for v in distinct)
    return f"{len(distinct)}, from {fmt(distinct[0], 3)} to {fmt(distinct[-1], 3)}"


def _grid(rows: list[dict], meta: dict) -> list[str]:
    """The grid as the sweep describes it (meta["grid"]) and as the usable points show it."""
    lines = ["## The grid", ""]
    grid = meta.get("grid")
    if isinstance(grid, dict) and grid:
        rows_ = [[k, json.dumps(v, default=str)] for k, v in grid.items()]
        lines += _table(["setting", "value"], rows_) + [""]
    elif grid:
        lines += [fmt(grid), ""]
    ok = [r for r in rows if is_ok(r)]
    budgets = [float(r["budget"]) for r in ok if r.get("budget") is not None]
    observed = [
        ["points", f"{len(ok)} fitted, {len(rows) - len(ok)} failed"],
        ["N (non-embedding parameters)", _values([float(r["params"]) for r in ok])],
        ["D (tokens)", _values([float(r["tokens"]) for r in ok])],
        ["IsoFLOP budgets C", _values(budgets) if budgets else "none"],
        ["C range", f"{fmt(min(map(compute_of, ok)), 3)} to {fmt(max(map(compute_of, ok)), 3)}"],
    ]
    return lines + _table(["in the results", ""], observed)


def _runs(rows: list[dict]) -> list[str]:
    table = []
    for row in rows:
        try:
            c = compute_of(row)
        except (KeyError, TypeError, ValueError):
            c = None
        status = row.get("status") or "ok"
        table.append(
            [
                row.get("id", "—"),
                row.get("params"),
                row.get("tokens"),
                c,
                row.get("loss"),
                row.get("bits_per_byte"),
                row.get("wall_s"),
                status,
            ]
        )
    lines = ["## Runs", ""]
    header = ["id", "N", "D", "C (FLOPs)", "loss (nats/token)", "bits/byte", "wall s", "status"]
    lines += _table(header, table)
    failed = [r for r in rows if not is_ok(r)]
    if failed:
        lines += ["", f"Failed runs ({len(failed)}, not fitted):", ""]
        lines += [
            f"- `{r.get('id', '?')}`: {fmt(r.get('error', 'no error recorded'))}" for r in failed
        ]
    return lines


def _approach3(result: dict, level: str) -> list[str]:
    a3, ci = result["approach3"], result["ci"]
    h, e = published.HOFFMANN_2022, published.BESIROGLU_2024
    rows = [
        [k, result[k], _ci(ci.get(k)), a3["least_squares"][k], h[k], e[k]]
        for k in ("E", "A", "B", "alpha", "beta")
    ]
    header = ["", "ours", f"{level} CI", "ours, least squares", "Hoffmann 2022", "Besiroglu 2024"]
    return [
        "## Approach 3: L(N, D) = E + A / N^α + B / D^β",
        "",
        f"Huber loss (δ = {a3['huber_delta']:g}) on log loss, L-BFGS from the best grid "
        f"initialisations; {result['n_points']} points, {a3['bootstrap_ok']} bootstrap refits"
        + (
            f" ({a3['bootstrap_improper']} improper, left out of the a, b intervals)."
            if a3["bootstrap_improper"]
            else "."
        ),
        "",
        *_table(header, rows),
        "",
        *([f"**Warning**: {a3['warning']}.", ""] if a3.get("warning") else []),
        "Absolute E, A and B are not comparable across tokenizers and data (ours are nats per "
        "byte-level token on Python source; theirs are per subword token on web text), but the "
        "exponents α, β and the allocation exponents a, b are.",
    ]


def _kaplan(result: dict, level: str) -> list[str]:
    lines = ["## Kaplan single-variable laws: L(N) = (N_c / N)^α_N, L(D) = (D_c / D)^α_D", ""]
    k = published.KAPLAN_2020
    rows = []
    for variable, other in (("N", "D"), ("D", "N")):
        block = result["kaplan"][f"L_{variable}"]
        for key in (f"alpha_{variable}", f"{variable}_c"):
            rows.append([key, block.get(key), _ci(block["ci"].get(key)), k[key]])
        if block.get(f"alpha_{variable}") is None:
            lines.append(f"- L({variable}) not fitted: {block['reason']}.")
            continue
        with_e = block["with_E"]
        extra = (
            f"; with an irreducible term, E = {fmt(with_e['E'])}, "
            f"α_{variable} = {fmt(with_e[f'alpha_{variable}'])}"
            if with_e
            else ""
        )
        at = block[f"at_{other}"]
        lines.append(
            f"- L({variable}) on the {block['n_points']} points at {other} ≈ {fmt(at)}{extra}."
        )
    return lines + ["", *_table(["", "ours", f"{level} CI", "Kaplan 2020"], rows)]


def _approach2(result: dict) -> list[str]:
    a2 = result["approach2"]
    lines = ["## Approach 2: IsoFLOP profiles", ""]
    rows = [
        [p["C"], p["n_points"], p["N_opt"], p["D_opt"], p["loss_opt"], p["reason"] or "used"]
        for p in a2["profiles"]
    ]
    if rows:
        header = ["C (FLOPs)", "points", "N_opt", "D_opt (on the profile)", "loss at min", "note"]
        lines += _table(header, rows) + [""]
    if a2["a"] is None:
        lines.append(f"No approach-2 exponents: {a2['reason']}.")
    else:
        lines.append(
            f"N_opt ∝ C^{a2['a']:.3f} and D_opt ∝ C^{a2['b']:.3f} from {a2['n_budgets']} budgets."
        )
    return lines


def _exponents(result: dict, level: str) -> list[str]:
    a2, a3 = result["approach2"], result["approach3"]
    rows = [
        ["ours, approach 2", a2["a"], _ci(a2["ci"].get("a")), a2["b"], _ci(a2["ci"].get("b"))],
        [
            "ours, approach 3",
            a3["implied_a"],
            _ci(a3["ci"].get("a")),
            a3["implied_b"],
            _ci(a3["ci"].get("b")),
        ],
    ]
    rows += [
        [f"Hoffmann 2022, {k}", a, "—", b, "—"] for k, (a, b) in published.HOFFMANN_2022_AB.items()
    ]
    e = published.BESIROGLU_2024
    total = e["alpha"] + e["beta"]
    rows.append(["Besiroglu 2024 (implied)", e["beta"] / total, "—", e["alpha"] / total, "—"])
    header = ["", "a", f"{level} CI", "b", f"{level} CI"]
    source = result["a_b_source"].replace("approach", "approach ")
    return [
        "## Allocation exponents: N_opt ∝ C^a, D_opt ∝ C^b",
        "",
        f"The headline a, b (fit.json) come from {source}.",
        "",
        *_table(header, rows),
    ]


def _allocation(result: dict) -> list[str]:
    rows = [
        [
            r["C"],
            r["N_opt"],
            r["D_opt"],
            r["tokens_per_param"],
            r["loss"],
            "yes" if r["beyond_sweep"] else "no",
        ]
        for r in result["allocation"]
    ]
    header = ["C (FLOPs)", "N_opt", "D_opt", "D / N", "predicted loss", "beyond sweep"]
    if not rows:
        return ["## Compute-optimal allocation (approach 3)", "", "Not derived: improper fit."]
    return [
        "## Compute-optimal allocation (approach 3)",
        "",
        "N_opt = G (C/6)^(β/(α+β)), D_opt = G⁻¹ (C/6)^(α/(α+β)), G = (αA / βB)^(1/(α+β)).",
        "",
        *_table(header, rows),
    ]


_FORM_NAMES = {"approach3": "approach 3", "kaplan_joint": "Kaplan's joint form"}


def _extrapolation(result: dict) -> list[str]:
    x = result["extrapolation"]
    lines = ["## Extrapolation check", ""]
    if "reason" in x:
        return lines + [f"Not run: {x['reason']}."]
    a3, kj, cv = x["approach3"], x["kaplan_joint"], x["cross_validation"]
    chosen = x["selected"]
    how = (
        f"leave-one-out cross-validation over the {cv['n_points']} fit points (mean error "
        f"approach 3 {100 * cv['approach3']:.2f}%, Kaplan joint {100 * cv['kaplan_joint']:.2f}%) "
        f"chose {_FORM_NAMES[chosen]}"
    )
    rows = [
        [p["id"], p["N"], p["D"], p["C"], p["loss"]]
        + [p["predicted"], f"{100 * p['rel_err']:+.2f}%"]
        + [q["predicted"], f"{100 * q['rel_err']:+.2f}%"]
        for p, q in zip(a3["points"], kj["points"], strict=True)
    ]
    f = kj["fit"]

    def summary(block: dict) -> str:
        verdict = "PASS" if block["pass"] else "FAIL"
        return (
            f"mean |relative error| {100 * block['mean_abs_rel_err']:.2f}%, "
            f"max {100 * block['max_abs_rel_err']:.2f}% ({verdict})"
        )

    return lines + [
        f"Both law forms fitted on the {x['n_fit']} lower-compute points predict the "
        f"{x['n_held_out']} highest-compute ones. Which form extrapolates is decided without the "
        f"held-out points: {how}. Verdict (every held-out point within "
        f"{100 * x['threshold']:.0f}%): **{'PASS' if x['pass'] else 'FAIL'}**, max error "
        f"{100 * x[chosen]['max_abs_rel_err']:.2f}%.",
        "",
        *_table(
            ["id", "N", "D", "C", "loss", "approach 3", "error", "Kaplan joint", "error"], rows
        ),
        "",
        f"- Approach 3, L = E + A/N^α + B/D^β: {summary(a3)}.",
        "- Kaplan's joint form, L = [(N_c/N)^(α_N/α_D) + D_c/D]^α_D (fitted: "
        f"N_c = {f['N_c']:.3g}, D_c = {f['D_c']:.3g}, α_N = {f['alpha_N']:.3f}, "
        f"α_D = {f['alpha_D']:.3f}): {summary(kj)}. In this form a larger model gains more from "
        "more data, which the additive form cannot express.",
    ]


def _verification(v: dict) -> list[str]:
    """The run beyond the grid: each form's prediction made in advance against its loss."""
    lines = ["## Verification beyond the grid", ""]
    if "reason" in v:
        return lines + [f"Not run: {v['reason']}."]
    p, run = v["prediction"], v["prediction"]["run"]
    level = f"{p['levels'][1] - p['levels'][0]:g}%"
    lines += [
        f"Predicted before it was trained (verify/prediction.json): `{run['id']}`, "
        f"{run['n_layers']} layers x d_model {run['d_model']} (the rung after the ladder's "
        f"largest), N = {fmt(run['params'])}, D = {fmt(run['tokens'])} tokens "
        f"({p.get('tokens_rule', '')}), C = {fmt(run['flops'])} FLOPs = "
        f"{run['flops'] / p['C_sweep_max']:.2g} x the sweep's largest. Every form was fitted on "
        f"all {p['n_points']} points; intervals from {p['n_bootstrap']} bootstrap refits.",
        "",
    ]
    rows = [
        [
            _FORM_NAMES[name],
            f["predicted"],
            _ci(f["interval"]),
            v["loss"],
            f"{100 * f['rel_err']:+.2f}%",
            "—" if f["inside"] is None else ("yes" if f["inside"] else "no"),
        ]
        for name, f in v["forms"].items()
    ]
    header = ["form", "predicted", f"{level} interval", "measured", "error", "inside"]
    right, chosen = v["right"], v["selected_in_advance"]
    return lines + [
        *_table(header, rows),
        "",
        f"Right: **{_FORM_NAMES[right]}** (error {100 * v['forms'][right]['rel_err']:+.2f}%). "
        f"Cross-validation over the sweep had chosen {_FORM_NAMES[chosen]} in advance"
        + (
            " (the same)."
            if chosen == right
            else f" (error {100 * v['forms'][chosen]['rel_err']:+.2f}%)."
        ),
    ]


def _plots(plot_status: dict) -> list[str]:
    lines = ["## Plots", ""]
    for name, caption in PLOTS.items():
        status = plot_status.get(name, "skipped: not drawn")
        if status == "written":
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
        else:
            lines += [f"- {caption} ({name}) {status}.", ""]
    return lines


def render(rows: list[dict], result: dict, meta: dict | None, plot_status: dict) -> str:
    """The whole report as Markdown.

    Args:
      rows: Every sweep row, failed ones included.
      result: The dict `scaling.fit.analyze` returns.
      meta: Free-form sweep information (title, command, machine, schedule, grid, ...).
      plot_status: File name -> "written" or "skipped: <reason>".

    Returns:
      The Markdown text.
    """
    meta = meta or {}
    lo, hi = result["bootstrap"]["levels"]
    level = f"{hi - lo:g}%"
    sections = [
        [f"# {meta.get('title', 'Scaling-law fit')}", "", *_meta(meta)],
        _grid(rows, meta),
        _runs(rows),
        _approach3(result, level),
        _kaplan(result, level),
        _approach2(result),
        _exponents(result, level),
        _allocation(result),
        _extrapolation(result),
        *([_verification(result["verification"])] if result.get("verification") else []),
        _plots(plot_status),
    ]
    return "\n\n".join("\n".join(s).strip("\n") for s in sections) + "\n"
