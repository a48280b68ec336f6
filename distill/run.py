"""Distillation runs: a student trained against a frozen teacher inside the sharded step.

`distill_and_evaluate(config, workdir)` is what `launch/run.py` calls for a config with a
`distill` block (experiments/distill.py). The student is an ordinary run (`train.loop.Run`:
mesh, sharded state, optimizer, eval batches, held-out evaluation by plain cross-entropy); the
teacher's parameters are restored from its run directory and placed with the shardings its own
logical axes give under the same rules, then passed to the jitted step as an argument (never
donated, never differentiated), where `distill.loss.make_loss_fn` is built around them and
handed to the project's train step. `distill.alpha = 0` trains the same student on the same
batches by cross-entropy alone and skips the teacher: the control of the experiment.

The run writes `config.json`, `metrics.jsonl`, a final checkpoint (the student's train state, so
experiments/compress_ckpt.py and evaluation read it like any run) and `summary.json`. It does not
resume
a killed run (rerunning starts it again).
"""

import os
import time

import flax.linen as nn
import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from compress.measure import load_config, load_params
from compress.quant import wrap_apply
from data.pipeline import make_eval_batches, make_train_iterator
from distill.loss import make_loss_fn
from models import get_model
from parallel.sharding import named_shardings
from studies.recipes import recipe_for
from train.checkpoint import Checkpointer
from train.loop import ConfigError, Run, claim_workdir, write_json_atomic
from train.metrics import MetricWriter
from train.step import make_train_step


def _teacher(run: Run, teacher_dir: str):
    """(model, model config, params placed with their logical shardings) of the teacher run."""
    tconfig = load_config(teacher_dir)
    model = get_model(tconfig.model.family)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tconfig.model))
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), run.rules)
    params = jax.device_put(load_params(teacher_dir), named_shardings(specs, run.mesh))
    return model, tconfig.model, params


def distill_and_evaluate(config, workdir: str) -> dict:
    """Trains the student of `config` with `config.distill`; returns the final summary."""
    t_start = time.perf_counter()
    d = config.distill
    student_config = config.copy_and_resolve_references()
    with student_config.unlocked():
        student_config.objective = "causal_lm"  # the held-out loss is plain cross-entropy
    try:
        run = Run(student_config, recipe=recipe_for(student_config))
        teacher = _teacher(run, d.teacher) if d.alpha > 0 else None
        train_iter = make_train_iterator(config.data, seed=config.seed)
        eval_batches = [
            run.global_batch(b)
            for b in make_eval_batches(config.data, num_batches=config.train.eval_batches)
        ]
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from e
    claim_workdir(workdir, config, "distillation run")
    tcfg = config.train
    student_apply = wrap_apply(run.model, config.model)
    bytes_per_token = run.tokenizer.bytes_per_token

    def step(state, teacher_params, batch):
        if teacher is None:
            loss_fn = run.loss_fn
        else:
            loss_fn = make_loss_fn(
                config.model,
                student_apply,
                teacher_params=teacher_params,
                teacher_apply=teacher[0].apply,
                teacher_cfg=teacher[1],
                alpha=d.alpha,
                temperature=d.temperature,
                bytes_per_token=bytes_per_token,
            )
        return make_train_step(loss_fn, run.optimizer, tcfg.grad_accum)(
            state, batch, run.schedule_args
        )

    teacher_params = None if teacher is None else teacher[2]
    teacher_shardings = jax.tree.map(lambda x: x.sharding, teacher_params)
    replicated = NamedSharding(run.mesh, P())
    with run.activate():
        step_fn = jax.jit(
            step,
            in_shardings=(run.state_shardings, teacher_shardings, run.batch_shardings),
            out_shardings=(run.state_shardings, replicated),
            donate_argnums=(0,),
        )
    writer = MetricWriter(workdir)
    writer.write(0, {"model/params_total": run.counts["total"]})
    state, summary = run.state, {}
    with run.activate():
        for i in range(1, tcfg.steps + 1):
            state, metrics = step_fn(state, teacher_params, run.global_batch(next(train_iter)))
            if i % tcfg.log_every == 0 or i == tcfg.steps:
                m = jax.device_get(metrics)
                writer.write(i, {"train/loss": float(m["loss"]), "train/lr": float(m["lr"])})
            if i % tcfg.eval_every == 0 or i == tcfg.steps:
                ev = run.evaluate(state.params, eval_batches)
                writer.write(i, {f"eval/{k}": v for k, v in ev.items()})
                summary.update({f"eval/{k}": v for k, v in ev.items()})
                print(f"step {i}: eval loss {ev['loss']:.4f} nats/token", flush=True)
    ckpt = Checkpointer(os.path.abspath(os.path.join(workdir, "checkpoints")), keep=1, every=0)
    ckpt.save(tcfg.steps, state, train_iter)
    ckpt.close()
    writer.close()
    summary.update(
        step=tcfg.steps,
        tokens=tcfg.steps * config.data.batch_size * config.data.seq_len,
        wall_s=time.perf_counter() - t_start,
        alpha=d.alpha,
        temperature=d.temperature,
        teacher=d.teacher,
    )
    write_json_atomic(os.path.join(workdir, "summary.json"), summary)
    return summary
