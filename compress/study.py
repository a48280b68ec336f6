"""The compression studies (experiments/compress_ckpt.py, experiments/prune_curve.py) as stages of
studies/stages.py: actions that compress the trained checkpoint of `config.source` and measure it
(compress/methods.py, compress/measure.py), and fine-tunes that are runs of the one loop
(docs/compression.md).
"""

import os

import ml_collections

from common import atomic
from compress import QUANT_BITS as BITS
from compress.magnitude import SCOPES
from compress.measure import Evaluator, measure, save_checkpoint, save_params
from compress.methods import METHODS, QUANT_BITS, compress, quant_bits
from compress.structured import IMPORTANCE, structured_config
from models.counting import count_params
from train.checkpoint import load_params
from train.loop import read_run_config
from train.recipe import Stage, stage_dir
from train.validate import ConfigError, check_fields

SCOPE = {"choices": SCOPES}
SPARSITY = {"type": float, "min": 0.0, "below": 1.0}
KEEP = {"type": int, "min": 0}  # 0: every head (neuron)
SOURCE_FIELDS = {
    "kind": {"choices": ("study",)},
    "source": {"type": str, "check": lambda c: _source_exists(c.source)},
    "eval_batches": {"type": int, "min": -1},  # -1: the source run's train.eval_batches
    "finetune": {"steps": {"type": int, "min": 0}, "lr": {"type": float, "above": 0.0}},
}
OPTION_FIELDS = {
    "sparsity": SPARSITY,
    "scope": SCOPE,
    "keep_heads": KEEP,
    "keep_ff": KEEP,
    "importance": {"choices": IMPORTANCE},
    "rank": {"type": int, "min": 0},
    "energy": {"type": float, "min": 0.0, "max": 1.0},
    "targets": {"type": str},
    "bits": {"choices": BITS},  # 0: the method's own
    "act_bits": {"choices": (-1, *BITS)},  # -1: the method's own
    "qat": {"type": bool},
}
COMPRESS_FIELDS = {**SOURCE_FIELDS, "method": {"choices": METHODS}, "options": OPTION_FIELDS}
CURVE_FIELDS = {
    **SOURCE_FIELDS,
    "sparsities": {"type": tuple, "items": SPARSITY},
    "finetune_at": {"type": tuple, "items": SPARSITY},
    "scope": SCOPE,
    "keep_heads": KEEP,
    "keep_ff": KEEP,
}


def _source_exists(source: str) -> None:
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise ValueError("no config.json there; pass source=<the workdir of a trained run>")


def _source(config) -> tuple[ml_collections.ConfigDict, Evaluator]:
    """The source run's config and an evaluator on its held-out batches (`eval_batches`)."""
    source_cfg = read_run_config(config.source)
    n = None if config.eval_batches < 0 else config.eval_batches
    return source_cfg, Evaluator(source_cfg, eval_batches=n)


def finetune_stage(name: str, config, source_cfg, init_from: str, *, model=None, quant=(0, 0),
                   sparsity: float = 0.0, scope: str = "global") -> Stage:  # fmt: skip
    """A run of the one loop from the checkpoint in `init_from`: the source's config with a fresh
    AdamW, `seed + 1` (not replaying the first batches), `finetune.steps` at peak `finetune.lr`
    (warmup 10%, cosine), one evaluation at the end on the actions' held-out batches, and as its
    recipe QAT at `quant` (weight, activation bits) or magnitude masks of `sparsity` applied before
    step 1 and held (`prune.start = end = 0`); `model` replaces the source's (structured)."""
    from compress import default_prune_config, default_quant_config

    c = source_cfg.copy_and_resolve_references()
    ft = config.finetune
    with c.unlocked():
        c.kind, c.init_from, c.seed = "train", os.path.abspath(init_from), source_cfg.seed + 1
        if model is not None:
            c.model = model
        c.quant = default_quant_config()
        c.quant.weight_bits, c.quant.act_bits = quant
        c.prune = default_prune_config()
        c.prune.update(sparsity=float(sparsity), start=0, end=0, scope=scope)
        t = c.train
        t.steps, t.lr, t.warmup_steps = ft.steps, ft.lr, max(ft.steps // 10, 1)
        t.eval_every = t.ckpt_every = ft.steps
        if config.eval_batches >= 0:
            t.eval_batches = config.eval_batches
    return Stage(name, config=c)


NEW_KEYS = ("loss", "bits_per_byte", "ckpt_bytes", "params", "params_nonzero", "flops_per_token")


def _compress_action(config, method: str, params_from: str, model_cfg=None, *, save=False):
    """An action compressing the checkpoint of `params_from` (the source or a fine-tune) with
    `method` and writing it (`config.json` with the activation bits it runs with, Orbax `params/`:
    compress/measure.py `load_compressed`) and its line against the untouched source; `save`
    also writes it as the checkpoint a fine-tune loads (structured pruning's smaller model)."""
    options = {**config.options.to_dict(), "targets": tuple(config.options.targets.split(","))}
    del options["qat"]

    def action(out: str, rows: dict) -> dict:
        source_cfg, evaluator = _source(config)
        params, cfg = load_params(params_from), model_cfg or source_cfg.model
        new_cfg, new_params, info = compress(method, cfg, params, evaluator, **options)
        base = measure(load_params(config.source), source_cfg.model, evaluator)
        new = measure(new_params, new_cfg, evaluator, info["act_bits"])
        c = source_cfg.copy_and_resolve_references()
        with c.unlocked():
            c.model, c.init_from = new_cfg, ""
            c.quant.weight_bits, c.quant.act_bits = 0, info["act_bits"]  # quantized already
        atomic.write_json(os.path.join(out, "config.json"), c.to_dict())
        save_params(os.path.join(out, "params"), new_params)
        if save:
            save_checkpoint(out, new_params)
        line = {
            **info,
            **{k: new[k] for k in (*NEW_KEYS, "flops_per_token_nonzero")},
            **{f"{k}_f32": base[k] for k in ("loss", "ckpt_bytes", "params", "flops_per_token")},
            "loss_change": new["loss"] / base["loss"] - 1.0,
            "bytes_ratio": new["ckpt_bytes"] / base["ckpt_bytes"],
            "source": config.source,
            "out": out,
        }
        if params_from != config.source and method in QUANT_BITS:
            # The tuned tree before quantization: the f32 reference of the same steps.
            line["loss_tuned_f32"] = evaluator.evaluate(params, cfg)["loss"]
        return line

    return action


def compress_stages(config, workdir: str) -> list[Stage]:
    """Stages of experiments/compress_ckpt.py: [fine-tune], compress and measure, [fine-tune the
    structurally pruned model, measure]."""
    check_fields(config, COMPRESS_FIELDS)
    o, method, source = config.options, config.method, config.source
    if not config.finetune.steps:
        return [Stage("compress", action=_compress_action(config, method, source))]
    if method == "lowrank":
        raise ConfigError("finetune.steps: low-rank factors are not fine-tuned; set it to 0")
    source_cfg, tuned = read_run_config(source), stage_dir(workdir, "finetune")
    if method == "structured":
        model = structured_config(source_cfg.model, o.keep_heads, o.keep_ff)
        return [
            Stage("compress", action=_compress_action(config, method, source, save=True)),
            finetune_stage(
                "finetune", config, source_cfg, stage_dir(workdir, "compress"), model=model
            ),  # fmt: skip
            Stage("tuned", action=_compress_action(config, "none", tuned, model)),
        ]
    quant = quant_bits(method, o.bits, o.act_bits) if method in QUANT_BITS and o.qat else (0, 0)
    sparsity = o.sparsity if method == "prune" else 0.0
    return [
        finetune_stage(
            "finetune", config, source_cfg, source, quant=quant, sparsity=sparsity, scope=o.scope
        ),  # fmt: skip
        Stage("compress", action=_compress_action(config, method, tuned)),
    ]


def compress_report(config, rows: dict) -> str:
    """The compressed model against the source: loss, bytes, parameters, FLOPs."""
    last = rows["tuned"] if "tuned" in rows else rows["compress"]
    tune = rows.get("finetune")
    lines = [
        f"# {config.method} of {config.source}",
        "",
        "| | held-out loss | checkpoint bytes | params (non-zero) | FLOPs/token |",
        "| --- | --- | --- | --- | --- |",
        f"| source | {last['loss_f32']:.4f} | {last['ckpt_bytes_f32']:,} | {last['params_f32']:,} "
        f"| {last['flops_per_token_f32']:,.0f} |",
        f"| {config.method} | {last['loss']:.4f} ({100 * last['loss_change']:+.2f}%) | "
        f"{last['ckpt_bytes']:,} ({100 * last['bytes_ratio']:.1f}%) | {last['params']:,} "
        f"({last['params_nonzero']:,}) | {last['flops_per_token']:,.0f} |",
    ]
    if tune:
        lines += ["", f"Fine-tuned {tune['step']} steps: loss at its end {tune['eval/loss']:.4f}."]
    if "loss_tuned_f32" in last:
        lines.append(f"The tuned tree before quantization: {last['loss_tuned_f32']:.4f}.")
    lines += ["", f"Compressed checkpoint: {last['out']} (config.json, params/)."]
    return "\n".join(lines)


def _tag(s: float) -> str:
    return f"{round(100 * s):02d}"


def _curve_action(config, method: str, sparsity: float = 0.0):
    """A point of the curve: `prune` one-shot at `sparsity`, or `structured` (its smaller model
    saved as the checkpoint its fine-tune loads, measured against the source)."""

    def action(out: str, rows: dict) -> dict:
        source_cfg, evaluator = _source(config)
        params = load_params(config.source)
        cfg, p, info = compress(method, source_cfg.model, params, evaluator, sparsity=sparsity,
                                scope=config.scope, keep_heads=config.keep_heads,
                                keep_ff=config.keep_ff)  # fmt: skip
        m = measure(p, cfg, evaluator)
        if method == "prune":
            return {
                "sparsity": sparsity,
                "measured_sparsity": info["measured_sparsity"],
                "loss_oneshot": m["loss"],
                "params_nonzero": m["params_nonzero"],
                "flops_per_token_nonzero": m["flops_per_token_nonzero"],
            }
        save_checkpoint(out, p)
        base = measure(params, source_cfg.model, evaluator)
        ratio = count_params(cfg)["non_embedding"] / count_params(source_cfg.model)["non_embedding"]
        return {
            **info,
            "loss_oneshot": m["loss"],
            "loss_f32": base["loss"],
            "params": m["params"],
            "params_f32": base["params"],
            "params_nonembedding_ratio": ratio,
            "flops_per_token": m["flops_per_token"],
            "flops_ratio": m["flops_per_token"] / base["flops_per_token"],
        }

    return action


def curve_points(config, rows: dict) -> tuple[list[dict], dict | None]:
    """(one row per sparsity with `loss_oneshot` and, if tuned, `loss_finetuned`; the structured
    point or None) from the stage rows."""
    points = []
    for s in config.sparsities:
        row = dict(rows[f"prune_{_tag(s)}"])
        tuned = rows.get(f"finetune_{_tag(s)}")
        if tuned:
            row["loss_finetuned"] = tuned["eval/loss"]
        points.append(row)
    structured = dict(rows["structured"]) if "structured" in rows else None
    if structured and "structured_finetune" in rows:
        structured["loss_finetuned"] = rows["structured_finetune"]["eval/loss"]
    return points, structured


def curve_stages(config, workdir: str) -> list[Stage]:
    """Stages of experiments/prune_curve.py: one-shot pruning at every sparsity, masked fine-tunes
    at `finetune_at` (every sparsity when empty; 0 is the dense model's same fine-tune), the
    structured point and its fine-tune, and the plot."""
    check_fields(config, CURVE_FIELDS)
    source_cfg, steps = read_run_config(config.source), config.finetune.steps
    stages = [Stage(f"prune_{_tag(s)}", action=_curve_action(config, "prune", s))
              for s in config.sparsities]  # fmt: skip
    if steps:
        stages += [finetune_stage(f"finetune_{_tag(s)}", config, source_cfg, config.source,
                                  sparsity=s, scope=config.scope)
                   for s in config.finetune_at or config.sparsities]  # fmt: skip
    if config.keep_heads:
        stages.append(Stage("structured", action=_curve_action(config, "structured")))
        if steps:
            model = structured_config(source_cfg.model, config.keep_heads, config.keep_ff)
            init_from = stage_dir(workdir, "structured")
            stages.append(finetune_stage("structured_finetune", config, source_cfg, init_from,
                                         model=model))  # fmt: skip

    def plot_action(out: str, rows: dict) -> dict:
        path = os.path.join(os.path.dirname(out), "loss_vs_sparsity.png")
        plot(*curve_points(config, rows), path)
        return {"plot": path}

    return [*stages, Stage("plot", action=plot_action)]


def curve_report(config, rows: dict) -> str:
    points, structured = curve_points(config, rows)
    lines = [
        f"# Loss vs. sparsity of {config.source}",
        "",
        f"Magnitude pruning ({config.scope}) of the layers' matmul weights, held-out loss "
        f"(nats/token); fine-tuning: {config.finetune.steps} steps at peak lr "
        f"{config.finetune.lr} with the masks held ([plot](loss_vs_sparsity.png)).",
        "",
        "| sparsity | measured | one-shot | fine-tuned |",
        "| --- | --- | --- | --- |",
    ]
    for p in points:
        tuned = f"{p['loss_finetuned']:.4f}" if "loss_finetuned" in p else ""
        lines.append(
            f"| {100 * p['sparsity']:.0f}% | {100 * p['measured_sparsity']:.1f}% | "
            f"{p['loss_oneshot']:.4f} | {tuned} |"
        )
    if structured:
        tuned = structured.get("loss_finetuned")
        lines += [
            "",
            f"Structured: {structured['n_heads']} heads, {structured['d_ff']} neurons per layer "
            f"({100 * structured['params_nonembedding_ratio']:.1f}% of the non-embedding "
            f"parameters, {100 * structured['flops_ratio']:.1f}% of the FLOPs): one-shot "
            f"{structured['loss_oneshot']:.4f} (f32 {structured['loss_f32']:.4f})"
            + (f", fine-tuned {tuned:.4f}" if tuned is not None else "")
            + ".",
        ]
    return "\n".join(lines)


def plot(rows: list[dict], structured: dict | None, path: str) -> None:
    """Held-out loss against sparsity: one-shot, fine-tuned, and the structured point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([100 * r["sparsity"] for r in rows], [r["loss_oneshot"] for r in rows], "o-",
            label="magnitude, one-shot")  # fmt: skip
    tuned = [r for r in rows if "loss_finetuned" in r]
    if tuned:
        ax.plot([100 * r["sparsity"] for r in tuned], [r["loss_finetuned"] for r in tuned], "s-",
                label="magnitude + fine-tuning")  # fmt: skip
    if structured:
        x = 100 * (1 - structured["params_nonembedding_ratio"])
        ax.plot([x], [structured["loss_oneshot"]], "k^", label="structured, one-shot")
        if "loss_finetuned" in structured:
            ax.plot([x], [structured["loss_finetuned"]], "kv", label="structured + fine-tuning")
    ax.set(xlabel="sparsity of the layers' matmul weights (%)", title="Pruning a trained model",
           ylabel="held-out loss (nats/token)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic.save_figure(fig, path)


def study_config(**fields) -> ml_collections.ConfigDict:
    """A study config over a trained run: `kind`, `source`, `eval_batches`, `finetune` and
    `fields`."""
    config = ml_collections.ConfigDict(
        {"kind": "study", "source": "", "eval_batches": -1, "finetune": {"steps": 0, "lr": 3e-4}}
    )
    config.update(fields)
    return config
