"""The human-readable AOT report (launch/aot.py prints it; `--json` prints the dict instead)."""

from aot.collectives import KINDS

GiB = 1024**3


def _gib(x: float) -> str:
    return f"{x / GiB:8.2f} GiB"


def _mesh(mesh: dict) -> str:
    return " x ".join(f"{k} {v}" for k, v in mesh.items() if v > 1) or "1 device"


def format_report(r: dict) -> str:
    """The report of one compile (aot/compile.py `compile_for`)."""
    m = r["memory"]
    cap = r["hbm_capacity_bytes"]
    head = cap - r["hbm_bytes_per_chip"]
    verdict = (
        f"FITS with {head / GiB:.2f} GiB ({head / cap:.0%}) of headroom"
        if r["fits"]
        else f"DOES NOT FIT: {-head / GiB:.2f} GiB ({-head / cap:.0%}) over the chip's capacity"
    )
    slices = f" x {r['num_slices']} slices" if r["num_slices"] > 1 else ""
    lines = [
        f"{r['slice']}: {r['chips']} x {r['chip']} ({r['topology']}{slices}); "
        f"mesh {_mesh(r['mesh'])}, rules {r['rules']}, attention {r.get('attention_impl', 'xla')}",
        f"model: {r['params'] / 1e6:,.1f}M parameters ({r['params_non_embedding'] / 1e6:,.1f}M "
        f"non-embedding), {r['tokens_per_step']:,} tokens per step",
        f"compiled in {r['compile_s']:.1f} s (train step; lowering {r['lower_s']:.1f} s, "
        f"eval step {r['eval_compile_s']:.1f} s)",
        "",
        "HBM per chip (train step):",
        f"  parameters       {_gib(r['param_bytes_per_chip'])}",
        f"  optimizer state  {_gib(r['opt_state_bytes_per_chip'])}",
        f"  arguments        {_gib(m['argument_bytes'])}  (state + batch)",
        f"  temporaries      {_gib(m['temp_bytes'])}  (activations, gradients, workspace)",
        f"  outputs          {_gib(m['output_bytes'] - m['alias_bytes'])}  (not aliased to the "
        "donated state)",
        f"  total            {_gib(r['hbm_bytes_per_chip'])}  of {cap / GiB:.2f} GiB: {verdict}",
    ]
    if r.get("compiler_error"):
        lines.append(f"  compiler: {' '.join(r['compiler_error'].split())[:300]}")
    if r.get("eval_memory"):
        lines.append(f"  eval step total  {_gib(r['eval_memory']['total_bytes'])}")
    ratio = r["hlo_flops_per_step"] / max(r["model_flops_per_step"], 1)
    lines += [
        "",
        "FLOPs per chip per step:",
        f"  model (6N + attention)  {r['model_flops_per_step']:.3e}",
        f"  compiled program        {r['hlo_flops_per_step']:.3e}  ({ratio:.2f} x model: "
        "recomputation)"
        + (
            f"; the {r['attention_impl']} kernels' attention FLOPs estimated from the model"
            if r.get("attention_impl", "xla") != "xla"
            else ""
        ),
        "",
        "Collectives per chip per step:",
        f"  {'kind':<20}{'count':>7}{'logical':>14}{'ICI wire':>14}{'DCN wire':>14}",
    ]
    for kind in KINDS:
        c = r["collectives"].get(kind)
        if c:
            lines.append(
                f"  {kind:<20}{c['count']:>7}{c['bytes'] / GiB:>10.3f} GiB"
                f"{c['wire_bytes_ici'] / GiB:>10.3f} GiB{c['wire_bytes_dcn'] / GiB:>10.3f} GiB"
            )
    if r.get("compiler_error"):
        lines += ["", "Roofline: none (the compiler made no executable to read)."]
        return "\n".join(lines)
    lines += [
        "",
        "Roofline (the largest bound is the step time; perfect overlap of the rest):",
        f"  compute {r['compute_s'] * 1e3:9.2f} ms   HBM {r['memory_s'] * 1e3:9.2f} ms   "
        f"ICI {r['ici_s'] * 1e3:9.2f} ms   DCN {r['dcn_s'] * 1e3:9.2f} ms",
        f"  step {r['step_time_s'] * 1e3:.2f} ms ({r['bound']}-bound): "
        f"{r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu']:.1%} (an upper bound)",
    ]
    return "\n".join(lines)


def format_search(ranked: list[dict], slice_) -> str:
    """The `--search` table: every mesh tried, those that fit ranked by roofline step time."""
    lines = [
        f"{slice_.describe()}: {len(ranked)} meshes compiled",
        f"{'rank':>4}  {'mesh':<34}{'rules':<9}{'GiB/chip':>9}{'fits':>6}{'step ms':>10}"
        f"{'bound':>9}{'MFU':>7}{'tok/s':>12}{'compile s':>10}",
    ]
    for i, r in enumerate(ranked, 1):
        if "error" in r:
            lines.append(f"{'-':>4}  {_mesh(r['mesh']):<34}{r['rules']:<9}  {r['error'][:60]}")
            continue
        lines.append(
            f"{i if r['fits'] else '-':>4}  {_mesh(r['mesh']):<34}{r['rules']:<9}"
            f"{r['hbm_bytes_per_chip'] / GiB:>9.2f}{'yes' if r['fits'] else 'no':>6}"
            f"{r['step_time_s'] * 1e3:>10.1f}{r['bound']:>9}{r['mfu']:>7.1%}"
            f"{r['tokens_per_s']:>12,.0f}{r['compile_s']:>10.1f}"
        )
    best = next((r for r in ranked if r.get("fits")), None)
    if best:
        lines.append(
            f"chosen: {_mesh(best['mesh'])} ({best['rules']}): the fastest roofline step among "
            "the meshes that fit; pass it as --config.parallel.mesh.<axis>=N"
        )
    else:
        lines.append("no mesh fits: shrink the batch, add remat, or take a larger slice")
    return "\n".join(lines)
