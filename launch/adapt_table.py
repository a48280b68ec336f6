r"""Runs experiments/adapt.py end to end and prints its table:
`python launch/adapt_table.py --workdir runs/adapt [--args steps=150,pre_steps=300]`.

Pre-trains the base model (once; a rerun reuses it), evaluates it on the held-out task before any
adaptation, then fine-tunes it three ways. The table (also written to `<workdir>/table.md`) gives
each method's held-out loss (nats/token and bits/byte on the task's validation files), trainable
parameters (count and share of the model), and median step time (from metrics.jsonl).
"""

import json
import os
import statistics

from absl import app, flags, logging

from common import atomic

_WORKDIR = flags.DEFINE_string("workdir", "runs/adapt", "Directory of the four runs.")
_ARGS = flags.DEFINE_string("args", "", "Extra experiments/adapt.py arguments (k=v,...).")


def _step_time_ms(workdir: str, tokens_per_step: int) -> float:
    rates = []
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            if "perf/tokens_per_s" in row and row["step"] > 10:  # past compilation
                rates.append(row["perf/tokens_per_s"])
    return 1000.0 * tokens_per_step / statistics.median(rates) if rates else float("nan")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from adapt import wrap as adapt
    from data.pipeline import make_eval_batches
    from experiments.adapt import get_config
    from studies.recipes import recipe_for
    from train.loop import Run, train_and_evaluate

    root = os.path.abspath(_WORKDIR.value)
    extra = f",{_ARGS.value}" if _ARGS.value else ""
    base = os.path.join(root, "pretrain")
    train_and_evaluate(get_config(f"method=pretrain{extra}"), base, desc="pretrain")
    rows = []
    # The base model on the task before adaptation: a 'full' run's evaluation at step 0.
    cfg0 = get_config(f"method=full,base={base}{extra}")
    run0 = Run(cfg0, recipe=recipe_for(cfg0))
    ev0 = run0.evaluate(
        run0.state.params,
        [
            run0.global_batch(b)
            for b in make_eval_batches(cfg0.data, num_batches=cfg0.train.eval_batches)
        ],
    )
    total = adapt.count_trainable(run0.state.params, cfg0.adapt)[1]
    rows.append(("base (no adaptation)", ev0["loss"], ev0["bits_per_byte"], 0, total, float("nan")))
    del run0
    for method in ("full", "lora", "prompt"):
        config = get_config(f"method={method},base={base}{extra}")
        workdir = os.path.join(root, method)
        summary = train_and_evaluate(config, workdir, desc=method, recipe=recipe_for(config))
        trainable, n = _count(config)
        tokens = config.data.batch_size * config.data.seq_len
        rows.append(
            (
                method,
                summary["eval/loss"],
                summary["eval/bits_per_byte"],
                trainable,
                n,
                _step_time_ms(workdir, tokens),
            )
        )
    lines = [
        "| method | held-out loss (nats/token) | bits/byte | trainable | share | step (ms) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, loss, bpb, trainable, n, ms in rows:
        lines.append(
            f"| {name} | {loss:.4f} | {bpb:.4f} | {trainable:,} | {100 * trainable / n:.2f}% "
            f"| {ms:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    atomic.write_text(os.path.join(root, "table.md"), table + "\n")


def _count(config) -> tuple[int, int]:
    """(trainable, total) parameters of the adapted tree, from shapes alone."""
    import flax.linen as nn
    import jax

    from adapt import wrap as adapt
    from models import get_model

    model = adapt.AdaptedModel(get_model(config.model.family), config.adapt, 360)
    shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), config.model)))
    return adapt.count_trainable(shapes, config.adapt)


if __name__ == "__main__":
    app.run(main)
