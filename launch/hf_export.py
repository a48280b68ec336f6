r"""Exports a checkpoint of this codebase as a Hugging Face model directory.

    python launch/hf_export.py --ckpt runs/gpt2_imported --out path/to/hf_dir [--step N]

`--ckpt` is a run's workdir (or a `launch/hf_import.py` output): `config.json` with the `model`
config and the Orbax directory `checkpoints/` (newest step unless `--step`). `--out` receives
config.json and model.safetensors, loadable with `transformers`' `from_pretrained(out)`.
"""

import argparse
import os
import sys


def read_checkpoint(workdir: str, step: int | None = None):
    """(model config, parameters as numpy arrays) of a workdir's checkpoint (newest by default)."""
    from train.checkpoint import load_state
    from train.loop import read_run_config

    cfg = read_run_config(workdir).model
    state = load_state(os.path.join(os.path.abspath(workdir), "checkpoints"), step)
    return cfg, state["params"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", required=True, help="workdir with config.json and checkpoints/")
    parser.add_argument("--out", required=True, help="Hugging Face directory to write")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    args = parser.parse_args(argv)
    from hf.convert import save_hf

    try:
        cfg, params = read_checkpoint(args.ckpt, args.step)
        save_hf(args.out, cfg, params)
    except (ValueError, KeyError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {cfg.family} model from {args.ckpt} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
