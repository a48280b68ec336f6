r"""Converts a Hugging Face model directory into an Orbax checkpoint of this codebase.

    python launch/hf_import.py --hf_dir path/to/gpt2 --out runs/gpt2_imported

`--hf_dir` holds config.json and model.safetensors (or a sharded index, or pytorch_model.bin) of a
GPT-2, BERT or T5 (v1.0 / v1.1) model; nothing is downloaded. `--out` becomes a directory shaped
like a run's workdir: `config.json` ({"model": <our model config>}) and `checkpoints/`, an Orbax
CheckpointManager directory whose step 0 holds the item `state` = {"params": <parameters>}, read by
`train.checkpoint.load_state` and by `launch/hf_export.py`.
"""

import argparse
import os
import sys


def write_checkpoint(out: str, cfg, params: dict) -> None:
    """Writes `out/config.json` and step 0 of the Orbax directory `out/checkpoints`.

    Raises:
      FileExistsError: `out` already holds a checkpoint.
    """
    import orbax.checkpoint as ocp

    from common.atomic import write_json

    ckpt_dir = os.path.join(os.path.abspath(out), "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise FileExistsError(f"{out} already holds checkpoints; pass another --out")
    os.makedirs(out, exist_ok=True)
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(ckpt_dir, options=options) as manager:
        # Orbax commits the step atomically (temporary directory + rename).
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
    write_json(os.path.join(out, "config.json"), {"model": cfg.to_dict()})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf_dir", required=True, help="Hugging Face model directory")
    parser.add_argument("--out", required=True, help="output directory (config.json, checkpoints/)")
    args = parser.parse_args(argv)
    from hf.convert import load_hf

    try:
        cfg, params = load_hf(args.hf_dir)
        write_checkpoint(args.out, cfg, params)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(v.size for v in _leaves(params))
    print(f"imported {cfg.family} model ({n:,} parameters) from {args.hf_dir} into {args.out}")
    return 0


def _leaves(tree):
    for v in tree.values():
        yield from _leaves(v) if isinstance(v, dict) else [v]


if __name__ == "__main__":
    sys.exit(main())
