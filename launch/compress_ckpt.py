r"""Compress a trained checkpoint and report what it buys: one method, one new checkpoint.

  python launch/compress_ckpt.py --workdir runs/small --method int8 --out runs/small_int8
  python launch/compress_ckpt.py --workdir runs/small --method int4 --qat --finetune_steps 100 ...
  python launch/compress_ckpt.py --workdir runs/small --method w4a8 --bits 3 ...
  python launch/compress_ckpt.py --workdir runs/small --method prune --sparsity 0.5 \
      --finetune_steps 50
  python launch/compress_ckpt.py --workdir runs/small --method structured \
      --keep_heads 3 --keep_ff 768
  python launch/compress_ckpt.py --workdir runs/small --method lowrank --energy 0.9

`--out` receives `config.json` (the run's config with the new model config), `params/` (Orbax:
int8 + scales, low-rank factors or the smaller model's arrays) and `report.json`; one JSON line
per call is appended to `--report` (default `<workdir>/compress.jsonl`) and printed: held-out
loss and bits/byte against the uncompressed model's, checkpoint bytes against the f32 tree
written the same way, parameters (non-zero too) and training FLOPs per token. Methods and their
options: compress/methods.py. `load_compressed(out)` reads an output back (evaluation,
generation: int8 leaves are dequantized inside the jitted forward pass).
"""

import json
import os
import sys

from absl import app, flags, logging

F = flags
F.DEFINE_string("workdir", None, "Run directory of the trained model (config.json, checkpoints/).")
F.DEFINE_integer("step", -1, "Checkpoint step (-1: the newest).")
F.DEFINE_string("method", "int8", "none|int8|int4|w8a8|w4a8|prune|structured|lowrank.")
F.DEFINE_string("out", None, "Output directory (default <workdir>_<method>).")
F.DEFINE_string("report", None, "JSONL file the report line is appended to.")
F.DEFINE_float("sparsity", 0.5, "prune: fraction of the layers' matmul weights removed.")
F.DEFINE_string("scope", "global", "prune: global|layer.")
F.DEFINE_integer("keep_heads", 0, "structured: heads kept per layer (0: all).")
F.DEFINE_integer("keep_ff", 0, "structured: MLP neurons kept per layer (0: all).")
F.DEFINE_string("importance", "taylor", "structured: taylor|weight.")
F.DEFINE_integer("rank", 0, "lowrank: rank of every target (0: use --energy).")
F.DEFINE_float("energy", 0.0, "lowrank: fraction of squared singular values kept.")
F.DEFINE_list("targets", ["q", "k", "v", "o", "wi", "wo"], "lowrank: layer weights factorised.")
F.DEFINE_integer("finetune_steps", 0, "Short fine-tuning (before quantizing, after the others).")
F.DEFINE_float("finetune_lr", 3e-4, "Peak learning rate of the fine-tuning.")
F.DEFINE_bool("qat", False, "int8/int4/w8a8/w4a8: fine-tune with fake quantization (QAT).")
F.DEFINE_integer("bits", 0, "int8/int4/w8a8/w4a8: weight bits instead of the method's (2-8).")
F.DEFINE_integer("act_bits", -1, "int8/int4/w8a8/w4a8: activation bits (0: none; -1: method's).")
F.DEFINE_integer("eval_batches", -1, "Held-out batches (-1: the run's train.eval_batches).")


def load_compressed(out: str):
    """(config, params) of a `launch/compress_ckpt.py` output directory."""
    from compress.methods import restore_params
    from compress.tune import load_config

    return load_config(out), restore_params(os.path.join(out, "params"))


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    FL = flags.FLAGS
    from compress.methods import compress, measure, save_params
    from compress.tune import Tools, load_config, load_params
    from train.loop import write_json_atomic

    config = load_config(FL.workdir)
    params = load_params(FL.workdir, None if FL.step < 0 else FL.step)
    tools = Tools(config, eval_batches=None if FL.eval_batches < 0 else FL.eval_batches)
    seq_len = config.data.seq_len
    try:
        new_cfg, new_params, info = compress(
            FL.method,
            config,
            params,
            tools,
            sparsity=FL.sparsity,
            scope=FL.scope,
            keep_heads=FL.keep_heads,
            keep_ff=FL.keep_ff,
            importance_kind=FL.importance,
            rank=FL.rank,
            energy=FL.energy,
            targets=tuple(FL.targets),
            finetune_steps=FL.finetune_steps,
            finetune_lr=FL.finetune_lr,
            qat=FL.qat,
            bits=FL.bits,
            act_bits=FL.act_bits,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    base = measure(params, config.model, tools, seq_len)
    new = measure(new_params, new_cfg, tools, seq_len)
    out = FL.out or f"{FL.workdir.rstrip('/')}_{FL.method}"
    os.makedirs(out, exist_ok=True)
    out_config = config.copy_and_resolve_references()
    with out_config.unlocked():
        out_config.model = new_cfg
    write_json_atomic(os.path.join(out, "config.json"), out_config.to_dict())
    save_params(os.path.join(out, "params"), new_params)
    line = {
        **info,
        "source": FL.workdir,
        "out": out,
        "loss": new["loss"],
        "bits_per_byte": new["bits_per_byte"],
        "loss_f32": base["loss"],
        "loss_change": new["loss"] / base["loss"] - 1.0,
        "ckpt_bytes": new["ckpt_bytes"],
        "ckpt_bytes_f32": base["ckpt_bytes"],
        "bytes_ratio": new["ckpt_bytes"] / base["ckpt_bytes"],
        "params": new["params"],
        "params_nonzero": new["params_nonzero"],
        "params_f32": base["params"],
        "flops_per_token": new["flops_per_token"],
        "flops_per_token_nonzero": new["flops_per_token_nonzero"],
        "flops_per_token_f32": base["flops_per_token"],
    }
    write_json_atomic(os.path.join(out, "report.json"), line)
    report = FL.report or os.path.join(FL.workdir, "compress.jsonl")
    with open(report, "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    print(json.dumps(line, sort_keys=True))


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
