r"""Plan a run for a compute budget: N, D, a model shape, its loss, and the slice time it costs.

  python launch/plan.py --law chinchilla --flops 1e22
  python launch/plan.py --law runs/scaling/fit.json --flops 1e15 --aspect 32 --head_dim 32
  python launch/plan.py --law epoch --flops 1e23 --topology v5p-1024 \
      --write experiments/planned_1e23.py --json

--law: a sweep's fit.json (its approach-3 law; N non-embedding; the interval from the bootstrap
refits it keeps), `chinchilla` (Hoffmann et al. 2022, approach 3) or `epoch` (Besiroglu et al.
2024's refit of the same data); both published laws count every parameter. The shape comes from
the fixed-aspect ladder of scaling/plan.py (--aspect d_model per layer, --head_dim); the model
and recipe are experiments/planned.py's (GPT-3's architecture and hyperparameters). With
--topology the shape is compiled for the slice through the aot package (aot/search.py: the
meshes that divide the slice, at most --meshes of them, ranked by roofline step time among those
that fit; up to 16 microbatches if none fits; a batch of GPT-3's table, or --batch_rows rows of
2,048 tokens): the mesh, HBM per chip, and the wall-clock and chip-hours for D tokens at the
roofline step time (a lower bound: its MFU is an upper bound).
--write PATH emits that run as an experiment file for launch/run.py and launch/aot.py.

Exit codes: 0 planned, 3 no mesh fits the slice, 2 bad input (one line, nothing written).
"""

import argparse
import json
import math
import os
import sys

# The repo root replaces this script's folder on the path: from there `import aot` would find
# launch/aot.py instead of the aot package.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT = 2, 3
PUBLISHED_LADDER = (128, 128)  # aspect, head_dim: GPT-3 175B's 96 x 12,288 with heads of 128
FIT_LADDER = (32, 32)  # experiments/scaling.py's cpu preset


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage and more)
        raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--law", required=True, help="fit.json | chinchilla | epoch")
    p.add_argument("--flops", required=True, type=float, help="training compute C in FLOPs")
    p.add_argument("--topology", help="a SLICE (launch/aot.py): v5p-256, 64xh100, ...")
    p.add_argument("--aspect", type=int, help="d_model per layer (128 published, 32 fit.json)")
    p.add_argument("--head_dim", type=int, help="head size (128 published, 32 fit.json)")
    p.add_argument("--meshes", type=int, default=2, help="meshes compiled at most per try (2)")
    p.add_argument(
        "--batch_rows", type=int, default=0, help="rows of 2,048 tokens per step (0: GPT-3's table)"
    )
    p.add_argument("--write", help="experiments/planned_<name>.py to emit (needs --topology)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _law(arg: str):
    from scaling.plan import PUBLISHED, PlanError, law_from_fit, published_law

    if arg in PUBLISHED:
        return published_law(arg)
    if not os.path.isfile(arg):
        raise PlanError(f"--law {arg}: no such file; pass a sweep's fit.json, chinchilla or epoch")
    try:
        with open(arg) as f:
            fit = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PlanError(f"--law {arg}: not a JSON fit ({e})") from e
    if not isinstance(fit, dict):
        raise PlanError(f"--law {arg}: not a fit.json object")
    return law_from_fit(fit, arg)


def _check(args) -> None:
    if not (math.isfinite(args.flops) and args.flops > 0):
        raise ValueError(f"--flops {args.flops}: need a positive FLOP count such as 1e22")
    if args.meshes < 1:
        raise ValueError(f"--meshes {args.meshes}: compile at least 1 mesh")
    if args.batch_rows < 0 or (args.batch_rows and not args.topology):
        raise ValueError(f"--batch_rows {args.batch_rows}: a positive row count, with --topology")
    if args.write:
        if not args.topology:
            raise ValueError("--write needs --topology: the file holds the slice's mesh")
        folder = os.path.dirname(os.path.abspath(args.write))
        if not args.write.endswith(".py") or not os.path.isdir(folder):
            raise ValueError(f"--write {args.write}: need a .py path in an existing folder")


def _compile(plan: dict, slice_, meshes: int, log, rows: int = 0) -> dict | None:
    """The best mesh that fits (aot/search.py), trying more microbatches while none does."""
    from aot.search import search
    from experiments.planned import planned_config

    devices = slice_.devices()
    # FSDP over every chip needs whole rows per chip: `rows` (0: GPT-3's batch), to the nearest
    # multiple of the chip count (at least one row per chip).
    rows = rows or planned_config(plan).data.batch_size
    chips = slice_.total_chips
    plan = plan | {"batch_rows": chips * max(1, round(rows / chips))}
    for grad_accum in (1, 4, 16):
        config = planned_config(plan | {"grad_accum": grad_accum})
        if config.data.batch_size % grad_accum:
            break
        log(f"plan: compiling for {slice_.describe()} with {grad_accum} microbatch(es)")
        ranked = search(config, slice_, devices=devices, log=log, limit=meshes)
        best = next((r for r in ranked if r.get("fits")), None)
        if best:
            return best | {"grad_accum": grad_accum, "batch_rows": config.data.batch_size}
    return None


def main(argv: list[str]) -> int:
    from scaling.plan import PlanError
    from scaling.plan import plan as make_plan

    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    try:
        args = _parser().parse_args(argv)
        _check(args)
        law = _law(args.law)
        slice_ = None
        if args.topology:
            from aot.slices import parse_slice

            slice_ = parse_slice(args.topology)
        from experiments.planned import model_config
        from models.counting import count_params

        aspect, head_dim = PUBLISHED_LADDER if law.n_definition == "total" else FIT_LADDER
        aspect, head_dim = args.aspect or aspect, args.head_dim or head_dim
        key = law.n_definition
        count = lambda s: count_params(model_config(s).model)[key]  # noqa: E731
        result = make_plan(law, args.flops, count, aspect, head_dim)
    except (ValueError, PlanError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    result["ladder"] = {"aspect": aspect, "head_dim": head_dim}
    code = 0
    if slice_ is not None:
        spec = {k: result["shape"][k] for k in ("n_layers", "d_model", "n_heads", "d_ff")}
        spec |= {"tokens": result["D"], "target": args.topology}
        quiet = lambda m: None  # noqa: E731
        best = _compile(spec, slice_, args.meshes, quiet if args.json else log, args.batch_rows)
        result["topology"] = _timing(best, result["D"], slice_)
        if best is None:
            code = EXIT_DOES_NOT_FIT
        elif args.write:
            spec |= {k: best[k] for k in ("mesh", "rules", "grad_accum", "batch_rows")}
            _write(args.write, spec, result, argv)
            result["written"] = args.write
    print(json.dumps(result) if args.json else _format(result))
    return code


def _timing(best: dict | None, tokens: float, slice_) -> dict:
    if best is None:
        return {"slice": slice_.name, "chips": slice_.total_chips, "fits": False}
    steps = math.ceil(tokens / best["tokens_per_step"])
    seconds = steps * best["step_time_s"]
    return {
        "slice": slice_.name,
        "chips": best["chips"],
        "chip": best["chip"],
        "fits": True,
        "mesh": best["mesh"],
        "rules": best["rules"],
        "grad_accum": best["grad_accum"],
        "batch_rows": best["batch_rows"],
        "tokens_per_step": best["tokens_per_step"],
        "steps": steps,
        "hbm_gib_per_chip": best["hbm_bytes_per_chip"] / 2**30,
        "step_time_s": best["step_time_s"],
        "bound": best["bound"],
        "mfu": best["mfu"],
        "days": seconds / 86400,
        "chip_hours": seconds / 3600 * best["chips"],
        "compile_s": best["compile_s"],
    }


def _write(path: str, spec: dict, result: dict, argv: list[str]) -> None:
    """The planned run as an experiment file (ruff-formatted as written)."""
    import textwrap

    from common import atomic

    head = (
        f"Planned by `python launch/plan.py {' '.join(argv)}`. {result['source']}: "
        f"C = {result['C']:.3g} FLOPs, N = {result['N']:.4g} ({result['n_definition']}), "
        f"D = {result['D']:.4g} tokens, predicted loss {result['loss']:.4f}."
    )
    spec = spec | {"tokens": int(round(spec["tokens"]))}
    plan = (
        "{\n" + "".join(f"    {json.dumps(k)}: {json.dumps(v)},\n" for k, v in spec.items()) + "}"
    )
    text = (
        '"""' + textwrap.fill(head, 96, break_on_hyphens=False) + '\n"""\n\n'
        "from experiments.planned import planned_config\n\n"
        f"PLAN = {plan}\n\n\n"
        'def get_config(arg: str = ""):\n    return planned_config(PLAN, arg)\n'
    )
    atomic.write_text(path, text)


def _format(r: dict) -> str:
    s = r["shape"]
    lines = [
        f"law: {r['law']} ({r['source']}); N counts {r['n_definition'].replace('_', '-')} "
        "parameters",
        f"C = {r['C']:.3g} FLOPs: N_opt = {r['N_opt']:.4g}, D_opt = {r['D_opt']:.4g} "
        f"({r['tokens_per_param']:.1f} tokens per parameter), loss {r['loss_opt']:.4f}",
        f"shape (ladder d_model = {r['ladder']['aspect']} x layers, heads of "
        f"{r['ladder']['head_dim']}): {s['n_layers']} layers x d_model {s['d_model']}, "
        f"{s['n_heads']} heads, d_ff {s['d_ff']}: N = {r['N']:.4g}; D = C / 6N = {r['D']:.4g}",
    ]
    ci = r["interval"]
    interval = f" [{ci[0]:.4f}, {ci[1]:.4f}] ({r['levels'][1] - r['levels'][0]:g}%)" if ci else ""
    lines.append(f"predicted loss {r['loss']:.4f}{interval}")
    t = r.get("topology")
    if t and t["fits"]:
        mesh = " x ".join(f"{k} {v}" for k, v in t["mesh"].items() if v > 1) or "1 device"
        lines.append(
            f"{t['slice']} ({t['chips']} x {t['chip']}): mesh {mesh} ({t['rules']}), "
            f"{t['grad_accum']} microbatch(es) of {t['batch_rows']} rows, "
            f"{t['hbm_gib_per_chip']:.1f} GiB/chip; roofline step {t['step_time_s']:.2f} s "
            f"({t['bound']}-bound, MFU {t['mfu']:.0%}) x {t['steps']:,} steps = "
            f"{t['days']:.1f} days, {t['chip_hours']:,.0f} chip-hours (lower bounds)"
        )
    elif t:
        lines.append(f"{t['slice']}: no mesh fits; take a larger slice")
    if r.get("written"):
        lines.append(f"config: {r['written']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
