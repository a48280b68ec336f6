r"""Exports a checkpoint of this codebase as a Hugging Face model directory.

    python launch/hf_export.py --ckpt runs/gpt2_imported --out path/to/hf_dir [--step N]

`--ckpt` is a run's workdir (or a `launch/hf_import.py` output): `config.json` with the `model`
config and the Orbax directory `checkpoints/` (newest step unless `--step`). `--out` receives
config.json and model.safetensors, loadable with `transformers`' `from_pretrained(out)`.
"""

import argparse
import json
import os
import sys


def read_checkpoint(workdir: str, step: int | None = None):
    """(model config, parameters as numpy arrays) of a workdir's checkpoint (newest by default)."""
    from models.sizes import default_model_config
    from train.checkpoint import load_state

    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{workdir} has no config.json; pass a run's workdir as --ckpt")
    with open(config_path) as f:
        saved = json.load(f)["model"]
    cfg = default_model_config("tiny")  # fields added since the checkpoint keep their defaults
    cfg.update(saved)
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
