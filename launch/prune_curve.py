r"""Loss vs. sparsity of one trained model: magnitude pruning at 0-90% without and with short
fine-tuning (masks fixed), plus structured pruning of heads and neurons on the same model.

  python launch/prune_curve.py --workdir runs/tiny300 --finetune_steps 30 \
      --keep_heads 3 --keep_ff 384 --out runs/tiny300_prune --finetune_at 0,0.5,0.7,0.9

Writes `<out>/prune_curve.jsonl` (one line per point: sparsity, loss one-shot, loss fine-tuned,
parameters and FLOPs), `<out>/structured.json` and `<out>/loss_vs_sparsity.png`. Every point
starts from the same checkpoint; fine-tuning runs the project's train step on the training data
(compress/tune.py) for `--finetune_steps` at `--finetune_lr`.
"""

import json
import os

from absl import app, flags, logging

from common import atomic

F = flags
F.DEFINE_string("workdir", None, "Run directory of the trained model.")
F.DEFINE_string("out", None, "Output directory (default <workdir>_prune).")
F.DEFINE_list("sparsities", [f"{s / 10:.1f}" for s in range(10)], "Sparsities to measure.")
F.DEFINE_string("scope", "global", "global|layer.")
F.DEFINE_integer("finetune_steps", 30, "Fine-tuning steps per point (0: one-shot only).")
F.DEFINE_list("finetune_at", [], "Sparsities that are also fine-tuned (empty: every one).")
F.DEFINE_float("finetune_lr", 1e-3, "Peak learning rate of the fine-tuning.")
F.DEFINE_integer("keep_heads", 0, "Structured: heads kept per layer (0: skip structured).")
F.DEFINE_integer("keep_ff", 0, "Structured: MLP neurons kept per layer.")
F.DEFINE_integer("eval_batches", -1, "Held-out batches (-1: the run's train.eval_batches).")
F.DEFINE_list("plot_only", [], "Only plot these prune_curve.jsonl files (merged by sparsity).")


def plot(rows: list[dict], structured: dict | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    s = [100 * r["sparsity"] for r in rows]
    ax.plot(s, [r["loss_oneshot"] for r in rows], "o-", label="magnitude, one-shot")
    tuned = [r for r in rows if "loss_finetuned" in r]
    if tuned:
        ax.plot(
            [100 * r["sparsity"] for r in tuned],
            [r["loss_finetuned"] for r in tuned],
            "s-",
            label="magnitude + fine-tuning",
        )
    if structured:
        x = 100 * (1 - structured["params_nonembedding_ratio"])
        ax.plot([x], [structured["loss_oneshot"]], "k^", label="structured, one-shot")
        if "loss_finetuned" in structured:
            ax.plot([x], [structured["loss_finetuned"]], "kv", label="structured + fine-tuning")
    ax.set_xlabel("sparsity of the layers' matmul weights (%)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title("Pruning a trained model")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic.save_figure(fig, path)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    FL = flags.FLAGS
    if FL.plot_only:  # e.g. a one-shot curve and a fine-tuned one measured by separate calls
        merged: dict = {}
        for path in FL.plot_only:
            with open(path) as f:
                for row in map(json.loads, f):
                    merged.setdefault(row["sparsity"], {}).update(row)
        plot(
            [merged[k] for k in sorted(merged)], None, os.path.join(FL.out, "loss_vs_sparsity.png")
        )
        return
    from compress.methods import compress, measure
    from compress.tune import Tools, load_config, load_params
    from models.counting import count_params
    from train.loop import write_json_atomic

    if not FL.workdir:
        raise app.UsageError("--workdir is required")
    config = load_config(FL.workdir)
    params = load_params(FL.workdir)
    tools = Tools(config, eval_batches=None if FL.eval_batches < 0 else FL.eval_batches)
    out = FL.out or f"{FL.workdir.rstrip('/')}_prune"
    os.makedirs(out, exist_ok=True)
    seq = config.data.seq_len
    kw = dict(finetune_lr=FL.finetune_lr)
    rows = []
    tune_at = {round(float(s), 6) for s in FL.finetune_at}
    for s in map(float, FL.sparsities):
        tune = FL.finetune_steps and (not tune_at or round(s, 6) in tune_at)
        cfg, p, info = compress("prune", config, params, tools, sparsity=s, scope=FL.scope)
        row = {"sparsity": s, "measured_sparsity": info["measured_sparsity"]}
        m = measure(p, cfg, tools, seq)
        row.update(loss_oneshot=m["loss"], params_nonzero=m["params_nonzero"])
        row["flops_per_token_nonzero"] = m["flops_per_token_nonzero"]
        if tune and s > 0:
            cfg, p, _ = compress(
                "prune", config, params, tools, sparsity=s, scope=FL.scope,
                finetune_steps=FL.finetune_steps, **kw,
            )  # fmt: skip
            row["loss_finetuned"] = tools.evaluate(p, cfg)["loss"]
        elif tune:
            # Sparsity 0: the same fine-tuning on the dense model, the reference for the rest.
            cfg, p, _ = compress(
                "none", config, params, tools, finetune_steps=FL.finetune_steps, **kw
            )
            row["loss_finetuned"] = tools.evaluate(p, cfg)["loss"]
        rows.append(row)
        print(json.dumps(row), flush=True)
        with open(os.path.join(out, "prune_curve.jsonl.tmp"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(
            os.path.join(out, "prune_curve.jsonl.tmp"), os.path.join(out, "prune_curve.jsonl")
        )
    structured = None
    if FL.keep_heads:
        cfg, p, info = compress(
            "structured", config, params, tools, keep_heads=FL.keep_heads,
            keep_ff=FL.keep_ff or config.model.d_ff,
        )  # fmt: skip
        m, base = measure(p, cfg, tools, seq), measure(params, config.model, tools, seq)
        structured = {
            **info,
            "loss_oneshot": m["loss"],
            "loss_f32": base["loss"],
            "params": m["params"],
            "params_f32": base["params"],
            "params_nonembedding_ratio": count_params(cfg)["non_embedding"]
            / count_params(config.model)["non_embedding"],
            "flops_per_token": m["flops_per_token"],
            "flops_per_token_f32": base["flops_per_token"],
            "flops_ratio": m["flops_per_token"] / base["flops_per_token"],
        }
        if FL.finetune_steps:
            cfg, p, _ = compress(
                "structured", config, params, tools, keep_heads=FL.keep_heads,
                keep_ff=FL.keep_ff or config.model.d_ff, finetune_steps=FL.finetune_steps, **kw,
            )  # fmt: skip
            structured["loss_finetuned"] = tools.evaluate(p, cfg)["loss"]
            structured["finetune_steps"] = FL.finetune_steps  # of loss_finetuned
            dense = [r for r in rows if r["sparsity"] == 0 and "loss_finetuned" in r]
            if dense:  # the unpruned model after the same steps: the fair reference
                structured["loss_f32_finetuned"] = dense[0]["loss_finetuned"]
        print(json.dumps(structured), flush=True)
        write_json_atomic(os.path.join(out, "structured.json"), structured)
    plot(rows, structured, os.path.join(out, "loss_vs_sparsity.png"))
    print(f"wrote {out}/loss_vs_sparsity.png")


if __name__ == "__main__":
    app.run(main)
