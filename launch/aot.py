r"""Will it fit? Compile a config for a TPU slice or GPU nodes from any machine, nothing run.

  python launch/aot.py --config experiments/gpt.py:size=xl --topology v5litepod-16
  python launch/aot.py --config experiments/llama.py:size=8b --topology v5p-64 --search
  python launch/aot.py --config experiments/llama.py:size=70b --topology 64xh100 --json

SLICE is a Cloud TPU type (v4-32, v5p-128, v5litepod-16, v6e-256), a topology (v5e:4x4,
v5p:4x4x8) or GPU nodes (8xh100, 64xh100, 8xa100); `--num_slices K` joins K TPU slices over DCN.
Needs `pip install -r requirements-aot.txt` (libtpu, and the CUDA plugin for GPU targets).

The run is built abstractly and its train and eval steps are compiled by the slice's own
compiler; the report gives, per chip: HBM (parameters, optimizer state, temporaries) against
capacity, model and compiled FLOPs, every collective by kind (ICI and DCN), and a roofline step
time with the tokens/s and MFU it implies (aot/roofline.py, chip figures cited in aot/chips.py).
`--search` compiles every mesh that divides the slice and the model and ranks those that fit.

Exit codes: 0 fits, 3 does not fit (the report says by how much), 2 bad input (one line).
"""

import argparse
import json
import os
import sys

# The repo root replaces this script's folder on the path: `launch/aot.py` would shadow `aot/`.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # eager work stays on the CPU; nothing runs else

EXIT_BAD_INPUT, EXIT_DOES_NOT_FIT = 2, 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="experiments/X.py[:args]")
    p.add_argument("--topology", required=True, help="SLICE (see above)")
    p.add_argument("--num_slices", type=int, default=1, help="TPU slices joined over DCN")
    p.add_argument("--search", action="store_true", help="rank every mesh that fits")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no_eval", action="store_true", help="compile the train step only")
    return p


def main(argv: list[str]) -> int:
    args, overrides = _parser().parse_known_args(argv)
    from aot.report import format_report, format_search
    from aot.search import search
    from aot.slices import parse_slice
    from launch.cluster import load_config
    from launch.run import describe_flag_error
    from train.validate import ConfigError

    bad = [o for o in overrides if not o.startswith("--config.")]
    try:
        if bad:
            raise ValueError(f"{bad[0]}: unknown argument; overrides look like --config.a.b=value")
        slice_ = parse_slice(args.topology, args.num_slices)
        try:
            config = load_config(args.config, overrides)
            config.keys()  # a config file that failed to load raises only when first read
        except Exception as e:  # absl, ml_collections and get_config all raise here
            raise ValueError(describe_flag_error(e, ["--config", *overrides])) from e
        devices = slice_.devices()
        if args.search:
            ranked = search(config, slice_, devices=devices, log=_log(args.json))
            best = next((r for r in ranked if r.get("fits")), None)
            print(json.dumps(ranked) if args.json else format_search(ranked, slice_))
            return 0 if best else EXIT_DOES_NOT_FIT
        from aot.compile import compile_for

        report = compile_for(config, slice_, devices=devices, eval_step=not args.no_eval)
    except (ValueError, ConfigError) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(report) if args.json else format_report(report))
    return 0 if report["fits"] else EXIT_DOES_NOT_FIT


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
