"""The compression studies (experiments/compress_ckpt.py, experiments/prune_curve.py) as stages of
studies/stages.py: actions that compress a trained checkpoint and measure it (compress/methods.py,
compress/measure.py), and fine-tunes that are runs of the one loop.

Every stage starts from `config.source`, a trained run's workdir (its config.json and newest
checkpoint). A fine-tune is that run's config with `init_from = source` (its parameters, a fresh
AdamW), `seed + 1` (so it does not replay the first training batches), `finetune.steps` updates at
peak `finetune.lr` (warmup 10%, cosine), one evaluation at the end on the held-out batches the
actions measure on, and the compression as the run's recipe: `prune` (the magnitude masks of the
loaded weights at the target sparsity, applied before step 1 and held: `prune.start = end = 0`)
or `quant` (QAT at the deployment bits). Structured pruning writes its smaller model as a
checkpoint that the fine-tune loads instead.
"""

import os

import ml_collections

from common import atomic
from compress.measure import (
    Evaluator,
    measure,
    save_checkpoint,
    save_params,
)
from compress.methods import METHODS, QUANT_BITS, compress, quant_bits
from compress.structured import IMPORTANCE, structured_config
from train.checkpoint import load_params
from train.loop import read_run_config
from train.recipe import Stage, stage_dir
from train.validate import ConfigError, check_fields

FINETUNE_FIELDS = {"steps": {"type": int, "min": 0}, "lr": {"type": float, "above": 0.0}}
SOURCE_FIELDS = {
    "kind": {"choices": ("study",)},
    "source": {"type": str, "check": lambda c: _source_exists(c.source)},
    "eval_batches": {"type": int, "min": -1},  # -1: the source run's train.eval_batches
    "finetune": FINETUNE_FIELDS,
}
OPTION_FIELDS = {
    "sparsity": {"type": float, "min": 0.0, "below": 1.0},
    "scope": {"choices": ("global", "layer")},
    "keep_heads": {"type": int, "min": 0},
    "keep_ff": {"type": int, "min": 0},
    "importance": {"choices": IMPORTANCE},
    "rank": {"type": int, "min": 0},
    "energy": {"type": float, "min": 0.0, "max": 1.0},
    "targets": {"type": str},
    "bits": {"type": int, "min": 0, "max": 8},
    "act_bits": {"type": int, "min": -1, "max": 8},
    "qat": {"type": bool},
}
COMPRESS_FIELDS = {**SOURCE_FIELDS, "method": {"choices": METHODS}, "options": OPTION_FIELDS}
CURVE_FIELDS = {
    **SOURCE_FIELDS,
    "sparsities": {"type": tuple, "items": {"type": float, "min": 0.0, "below": 1.0}},
    "finetune_at": {"type": tuple, "items": {"type": float, "min": 0.0, "below": 1.0}},
    "scope": {"choices": ("global", "layer")},
    "keep_heads": {"type": int, "min": 0},
    "keep_ff": {"type": int, "min": 0},
}


def _source_exists(source: str) -> None:
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise ValueError("no config.json there; pass source=<the workdir of a trained run>")


def _evaluator(config, source_cfg) -> Evaluator:
    n = None if config.eval_batches < 0 else config.eval_batches
    return Evaluator(source_cfg, eval_batches=n)


def finetune_stage(name: str, config, source_cfg, init_from: str, *, model=None, quant=(0, 0),
                   sparsity: float = 0.0, scope: str = "global") -> Stage:  # fmt: skip
    """A run of the one loop fine-tuning the checkpoint in `init_from` (module docstring).

    Args:
      name: the stage name.
      config: the study config (`finetune`, `eval_batches`).
      source_cfg: the trained run's config.
      init_from: the workdir whose checkpoint it starts from.
      model: the model config when it is not the source's (structured pruning).
      quant: (weight bits, activation bits) of quantization-aware training, (0, 0) for none.
      sparsity: > 0 holds magnitude masks of this sparsity (`scope`) from step 0.
    """
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


def _write_compressed(out: str, source_cfg, model_cfg, params, act_bits: int) -> None:
    """A compressed checkpoint: `config.json` (the model it is, the activation bits it runs
    with) and Orbax `params/`; compress/measure.py `load_compressed` reads it back."""
    c = source_cfg.copy_and_resolve_references()
    with c.unlocked():
        c.model = model_cfg
        c.quant.weight_bits, c.quant.act_bits = 0, act_bits  # the weights are quantized already
        c.init_from = ""
    atomic.write_json(os.path.join(out, "config.json"), c.to_dict())
    save_params(os.path.join(out, "params"), params)


def _line(info: dict, new: dict, base: dict) -> dict:
    return {
        **info,
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


def _compress_action(config, method: str, params_from: str, model_cfg=None, *, save=False):
    """An action compressing the checkpoint of `params_from` (the source or a fine-tune) with
    `method`, measuring it against the untouched source and writing it to its stage directory."""
    o = config.options

    def action(out: str, rows: dict) -> dict:
        del rows
        source_cfg = read_run_config(config.source)
        evaluator = _evaluator(config, source_cfg)
        params, cfg = load_params(params_from), model_cfg or source_cfg.model
        new_cfg, new_params, info = compress(
            method, cfg, params, evaluator, sparsity=o.sparsity, scope=o.scope,
            keep_heads=o.keep_heads, keep_ff=o.keep_ff, importance_kind=o.importance,
            rank=o.rank, energy=o.energy, targets=tuple(o.targets.split(",")), bits=o.bits,
            act_bits=o.act_bits,
        )  # fmt: skip
        base = measure(load_params(config.source), source_cfg.model, evaluator)
        new = measure(new_params, new_cfg, evaluator, info["act_bits"])
        _write_compressed(out, source_cfg, new_cfg, new_params, info["act_bits"])
        if save:  # the smaller model, as a checkpoint a fine-tune can start from
            save_checkpoint(out, new_params)
        line = _line(info, new, base)
        if params_from != config.source and method in QUANT_BITS:
            # The tuned tree before quantization: the f32 reference of the same steps.
            line["loss_tuned_f32"] = evaluator.evaluate(params, cfg)["loss"]
        return {**line, "source": config.source, "out": out}

    return action


def compress_stages(config, workdir: str) -> list[Stage]:
    """Stages of experiments/compress_ckpt.py: [fine-tune], compress and measure, [fine-tune the
    structurally pruned model, measure]."""
    check_fields(config, COMPRESS_FIELDS)
    o, steps = config.options, config.finetune.steps
    source_cfg = read_run_config(config.source)
    if config.method in QUANT_BITS:
        try:
            bits = quant_bits(config.method, o.bits, o.act_bits)
        except ValueError as e:
            raise ConfigError(f"options.bits / options.act_bits: {e}") from e
    if not steps:
        return [Stage("compress", action=_compress_action(config, config.method, config.source))]
    if config.method == "lowrank":
        raise ConfigError("finetune.steps: low-rank factors are not fine-tuned; set it to 0")
    if config.method == "structured":
        new_model = structured_config(source_cfg.model, o.keep_heads or source_cfg.model.n_heads,
                                      o.keep_ff or source_cfg.model.d_ff)  # fmt: skip
        compressed = stage_dir(workdir, "compress")
        tuned = stage_dir(workdir, "finetune")
        return [
            Stage(
                "compress", action=_compress_action(config, "structured", config.source, save=True)
            ),  # fmt: skip
            finetune_stage("finetune", config, source_cfg, compressed, model=new_model),
            Stage("tuned", action=_compress_action(config, "none", tuned, new_model)),
        ]
    quant = bits if config.method in QUANT_BITS and o.qat else (0, 0)
    sparsity = o.sparsity if config.method == "prune" else 0.0
    tune = finetune_stage("finetune", config, source_cfg, config.source, quant=quant,
                          sparsity=sparsity, scope=o.scope)  # fmt: skip
    tuned = stage_dir(workdir, "finetune")
    return [tune, Stage("compress", action=_compress_action(config, config.method, tuned))]


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


def _oneshot_action(config, sparsity: float):
    def action(out: str, rows: dict) -> dict:
        del out, rows
        source_cfg = read_run_config(config.source)
        evaluator = _evaluator(config, source_cfg)
        cfg, p, info = compress("prune", source_cfg.model, load_params(config.source),
                                sparsity=sparsity, scope=config.scope)  # fmt: skip
        m = measure(p, cfg, evaluator)
        return {
            "sparsity": sparsity,
            "measured_sparsity": info["measured_sparsity"],
            "loss_oneshot": m["loss"],
            "params_nonzero": m["params_nonzero"],
            "flops_per_token_nonzero": m["flops_per_token_nonzero"],
        }

    return action


def _structured_action(config):
    def action(out: str, rows: dict) -> dict:
        del rows
        from models.counting import count_params

        source_cfg = read_run_config(config.source)
        evaluator = _evaluator(config, source_cfg)
        params = load_params(config.source)
        cfg, p, info = compress("structured", source_cfg.model, params, evaluator,
                                keep_heads=config.keep_heads,
                                keep_ff=config.keep_ff or source_cfg.model.d_ff)  # fmt: skip
        save_checkpoint(out, p)
        m, base = measure(p, cfg, evaluator), measure(params, source_cfg.model, evaluator)
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
    source_cfg = read_run_config(config.source)
    stages = [
        Stage(f"prune_{_tag(s)}", action=_oneshot_action(config, s)) for s in config.sparsities
    ]
    if config.finetune.steps:
        tune_at = config.finetune_at or config.sparsities
        stages += [
            finetune_stage(
                f"finetune_{_tag(s)}",
                config,
                source_cfg,
                config.source,
                sparsity=s,
                scope=config.scope,
            )  # fmt: skip
            for s in tune_at
        ]
    if config.keep_heads:
        model = structured_config(source_cfg.model, config.keep_heads,
                                  config.keep_ff or source_cfg.model.d_ff)  # fmt: skip
        stages.append(Stage("structured", action=_structured_action(config)))
        if config.finetune.steps:
            structured = stage_dir(workdir, "structured")
            stages.append(finetune_stage("structured_finetune", config, source_cfg, structured,
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
    s = [100 * r["sparsity"] for r in rows]
    ax.plot(s, [r["loss_oneshot"] for r in rows], "o-", label="magnitude, one-shot")
    tuned = [r for r in rows if "loss_finetuned" in r]
    if tuned:
        ax.plot([100 * r["sparsity"] for r in tuned], [r["loss_finetuned"] for r in tuned], "s-",
                label="magnitude + fine-tuning")  # fmt: skip
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


def study_config(**fields) -> ml_collections.ConfigDict:
    """A study config over a trained run: `kind`, `source`, `eval_batches`, `finetune` and
    `fields`."""
    config = ml_collections.ConfigDict(
        {"kind": "study", "source": "", "eval_batches": -1, "finetune": {"steps": 0, "lr": 3e-4}}
    )
    config.update(fields)
    return config
