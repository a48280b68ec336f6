"""Pre-train, then fine-tune on a labelled task, against the same task from scratch: the stages
and report of experiments/classify.py (encoder) and experiments/seq2seq.py (encdec).

Stages: `pretrain`; `before` (a finetune run at step 0, fresh head: held-out loss, accuracy or
exact match, and the task's majority baseline); `finetune` (from `pretrain`); `scratch` (random
weights, on by default); seq2seq's `decode` (greedy-decoding exact match of the first `decode`
held-out examples of finetune and scratch). The report is one table of these per phase.
"""

import os

from studies.stages import Stage, initial_eval, run_config


def exact_match(params, config, n: int) -> tuple[float, int]:
    """Greedy-decoding exact match on the first `n` held-out examples (data/tasks.py order)."""
    from data import tasks
    from data.pipeline import tokenizer_from_config
    from models.generate import SampleSettings, generate

    tok = tokenizer_from_config(config.data)
    pairs = tasks.held_out(config.data)[:n]
    arrays = tasks.encode(config.data, tok, pairs)

    inputs, targets = (
        [r[s > 0].tolist() for r, s in zip(arrays[k], arrays[f"{k}_segment_ids"], strict=True)]
        for k in ("inputs", "targets")
    )
    settings = SampleSettings(
        max_new_tokens=config.data.task.target_len, stop_ids=(tok.eos_id,), pad_id=tok.pad_id
    )
    out = generate(params, inputs, config.model, settings)
    hits = sum(o == t for o, t in zip(out, targets, strict=True))
    return hits / max(len(pairs), 1), len(pairs)


def _before(config, decode_n: int) -> dict:
    """The pre-trained model on the task at step 0 (fresh head), and the task's baseline."""
    import jax

    from data import tasks

    def batches(run):
        return tasks.make_eval_batches(
            config.data, run.tokenizer, num_batches=config.train.eval_batches
        )

    run, row = initial_eval(config, batches)
    if decode_n:
        params = jax.device_get(run.state.params)
        row["exact_match"], row["decoded"] = exact_match(params, config, decode_n)
    label, value = tasks.baseline(config.data)
    row["task"] = f"{config.objective} ({config.data.task.name})"
    row["baseline"] = {"label": label, "value": value}
    row["examples"] = {
        "train": len(tasks.examples(config.data, "train")),
        "held_out": len(tasks.examples(config.data, "validation")),
    }
    return row


def stages(config, workdir: str, task_run) -> list[Stage]:
    """The stages of a task study config (experiments/common.task_phase, phase 'study');
    `task_run(pretrain, args, phase, base)` is the experiment's fine-tune or scratch config."""
    args = config.study
    pretrain = run_config(config, "study")
    finetune = task_run(pretrain, args, "finetune", os.path.join(workdir, "pretrain"))
    runs = {"finetune": finetune}
    if args.scratch:
        runs["scratch"] = task_run(pretrain, args, "scratch", "")
    decode_n = args.get("decode", 0) if finetune.objective == "seq2seq" else 0

    def decode(stage_dir: str, rows: dict) -> dict:
        from train.checkpoint import load_params

        row = {}
        for name, c in runs.items():
            em, n = exact_match(load_params(os.path.join(workdir, name)), c, decode_n)
            row[name] = {"exact_match": em, "decoded": n}
        return row

    return [
        Stage("pretrain", pretrain),
        Stage("before", action=lambda stage_dir, rows: _before(finetune, decode_n)),
        *(Stage(name, c) for name, c in runs.items()),
        *([Stage("decode", action=decode)] if decode_n else []),
    ]


def report(config, rows: dict) -> str:
    """The markdown table of the study's rows (module docstring)."""
    before = rows["before"]
    classify = "exact_match" not in before
    metric = "accuracy" if classify else "exact match"
    n, base = before["examples"], before["baseline"]
    lines = [
        f"{before['task']}: {n['train']} train / {n['held_out']} held-out examples; majority "
        f"baseline ({base['label']!r}) {metric} {base['value']:.4f}",
        "",
        f"| phase | steps | held-out loss (nats) | {metric} | wall (s) | load (1 min) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    decoded = rows.get("decode", {})
    for name in (n for n in ("pretrain", "before", "finetune", "scratch") if n in rows):
        r = rows[name]
        # pretrain: the pre-training objective's own metrics, not the task's
        score = r.get("eval/accuracy") if classify else decoded.get(name, r).get("exact_match")
        score = None if name == "pretrain" else score
        lines.append(
            f"| {name} | {r.get('step', 0)} | {r['eval/loss']:.4f} | "
            f"{'-' if score is None else f'{score:.4f}'} | {r['stage_wall_s']:.0f} | "
            f"{r['load_1min']:.1f} |"
        )
    if decoded:
        lines.append(
            f"\ndecoding {decoded['finetune']['decoded']} held-out examples per phase "
            f"took {decoded['stage_wall_s']:.0f} s"
        )
    return "\n".join(lines)
