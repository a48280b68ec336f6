r"""Pre-trains, then fine-tunes, the encoder (classification) or the encoder-decoder (seq2seq) and
prints a table:

  python launch/finetune.py --task=classify|seq2seq --workdir runs/X [--args k=v,...]


Phases (each a `train.loop` run in `<workdir>/<phase>`; a rerun reuses finished ones):
  pretrain  masked LM (encoder) / span corruption (encdec) on the corpus (experiments/bert.py,
            experiments/t5.py)
  finetune  the task from the pre-trained checkpoint (`init_from`)
  scratch   the same task run from random weights (`--scratch`, on by default)
plus 'before': the pre-trained model on the task before any fine-tuning (a finetune run's state at
step 0, head freshly initialised). Rows give held-out loss and accuracy (classify) or held-out loss
and the exact match of greedy decoding of `--decode` held-out examples (seq2seq,
models/generate.py), beside the majority baseline, each phase's wall time and the load average
(1 min) at its end. The table goes to `<workdir>/table.md`, the numbers to `results.json`, both
written atomically.
"""

import os
import sys
import time

from absl import app, flags, logging

from common import atomic

_TASK = flags.DEFINE_enum("task", "classify", ["classify", "seq2seq"], "Which pipeline.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Directory of the runs ('' = runs/<task>).")
_ARGS = flags.DEFINE_string("args", "", "Extra experiments/<task>.py arguments (k=v,...).")
_SCRATCH = flags.DEFINE_bool("scratch", True, "Also train the task from random weights.")
_DECODE = flags.DEFINE_integer("decode", 512, "seq2seq: held-out examples to decode greedily.")


def exact_match(params, config, n: int) -> tuple[float, int]:
    """Greedy-decoding exact match on the first `n` held-out examples (data/tasks.py order)."""
    from data import tasks
    from data.pipeline import tokenizer_from_config
    from models.generate import SampleSettings, generate

    tok = tokenizer_from_config(config.data)
    pairs = tasks.held_out(config.data)[:n]
    arrays = tasks.encode(config.data, tok, pairs)

    def unpadded(side):
        ids, seg = arrays[side], arrays[f"{side}_segment_ids"]
        return [r[s > 0].tolist() for r, s in zip(ids, seg, strict=True)]

    inputs, targets = unpadded("inputs"), unpadded("targets")
    settings = SampleSettings(
        max_new_tokens=config.data.task.target_len, stop_ids=(tok.eos_id,), pad_id=tok.pad_id
    )
    out = generate(params, inputs, config.model, settings)
    hits = sum(o == t for o, t in zip(out, targets, strict=True))
    return hits / max(len(pairs), 1), len(pairs)


def _phase(name, config, workdir, rows, decode_n):
    from studies.recipes import recipe_for
    from train.checkpoint import load_state
    from train.loop import train_and_evaluate

    t = time.perf_counter()
    summary = train_and_evaluate(config, workdir, desc=name, recipe=recipe_for(config))
    if summary.get("preempted"):  # a signal stopped the phase with a checkpoint: stop here too
        print(f"{name} preempted at step {summary['step']}; rerun the same command to resume")
        sys.exit(0)
    row = {
        "phase": name,
        "steps": config.train.steps,
        "loss": summary["eval/loss"],
        "accuracy": summary.get("eval/accuracy"),
        "wall_s": summary["wall_s"],
    }
    if decode_n and config.objective == "seq2seq":
        params = load_state(os.path.join(workdir, "checkpoints"))["params"]
        row["exact_match"], row["decoded"] = exact_match(params, config, decode_n)
    row["launch_s"], row["load_1min"] = time.perf_counter() - t, os.getloadavg()[0]
    rows.append(row)
    return row


def _before(config, decode_n) -> dict:
    """The pre-trained model on the task at step 0 (fresh head): held-out loss (and EM)."""
    import jax

    from data import tasks
    from studies.recipes import recipe_for
    from train.loop import Run

    t = time.perf_counter()
    run = Run(config, recipe=recipe_for(config))
    batches = tasks.make_eval_batches(
        config.data, run.tokenizer, num_batches=config.train.eval_batches
    )
    ev = run.evaluate(run.state.params, [run.global_batch(b) for b in batches])
    row = {"phase": "before", "steps": 0, "loss": ev["loss"], "accuracy": ev.get("accuracy")}
    if decode_n and config.objective == "seq2seq":
        params = jax.device_get(run.state.params)
        row["exact_match"], row["decoded"] = exact_match(params, config, decode_n)
    row["wall_s"] = row["launch_s"] = time.perf_counter() - t
    row["load_1min"] = os.getloadavg()[0]
    return row


def table(task: str, rows: list[dict], baseline: tuple, n_train: int, n_held: int) -> str:
    """The markdown table of `rows` (see the module docstring)."""
    metric = "accuracy" if task == "classify" else "exact match"
    label, value = baseline
    lines = [
        f"{task}: {n_train} train / {n_held} held-out examples; majority baseline "
        f"({label!r}) {metric} {value:.4f}",
        "",
        f"| phase | steps | held-out loss (nats) | {metric} | wall (s) | load (1 min) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        score = r.get("accuracy") if task == "classify" else r.get("exact_match")
        score = "-" if score is None else f"{score:.4f}"
        lines.append(
            f"| {r['phase']} | {r['steps']} | {r['loss']:.4f} | {score} | {r['launch_s']:.0f} "
            f"| {r['load_1min']:.1f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from data import tasks

    if _TASK.value == "classify":
        from experiments.classify import get_config
    else:
        from experiments.seq2seq import get_config
    root = os.path.abspath(_WORKDIR.value or os.path.join("runs", _TASK.value))
    extra = f",{_ARGS.value}" if _ARGS.value else ""
    decode_n = _DECODE.value if _TASK.value == "seq2seq" else 0
    t0 = time.perf_counter()
    rows: list[dict] = []
    base = os.path.join(root, "pretrain")
    _phase("pretrain", get_config(f"phase=pretrain{extra}"), base, rows, 0)
    rows[-1]["accuracy"] = None  # the pre-training objective's own metrics, not the task's
    finetune = get_config(f"phase=finetune,base={base}{extra}")
    rows.append(_before(finetune, decode_n))
    _phase("finetune", finetune, os.path.join(root, "finetune"), rows, decode_n)
    if _SCRATCH.value:
        scratch = get_config(f"phase=scratch{extra}")
        _phase("scratch", scratch, os.path.join(root, "scratch"), rows, decode_n)
    baseline = tasks.baseline(finetune.data)
    n_train = len(tasks.examples(finetune.data, "train"))
    n_held = len(tasks.examples(finetune.data, "validation"))
    text = table(_TASK.value, rows, baseline, n_train, n_held)
    total = time.perf_counter() - t0
    text += f"\n\ntotal wall {total:.0f} s, load average at the end {os.getloadavg()}\n"
    print(text)
    atomic.write_text(os.path.join(root, "table.md"), text)
    atomic.write_json(
        os.path.join(root, "results.json"),
        {
            "task": _TASK.value,
            "rows": rows,
            "baseline": {"label": baseline[0], "value": baseline[1]},
            "examples": {"train": n_train, "held_out": n_held},
            "total_wall_s": total,
        },
    )


if __name__ == "__main__":
    app.run(main)
