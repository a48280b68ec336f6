"""The training loop: config -> data -> model -> loss -> jitted sharded step -> checkpoints.

`train_and_evaluate(config, workdir)` is the one function `launch/run.py` calls for a single run.
It resumes automatically from the newest intact checkpoint in `workdir/checkpoints` (bitwise: the
same parameters, optimizer state, RNG and data position; metrics.jsonl is cut back to that step, so
no step is written twice). SIGTERM/SIGINT stop it after the current step with a checkpoint
(train/preemption.py); a non-finite loss or gradient is handled by `train.nan_policy`.
"""

import contextlib
import functools
import json
import os
import sys
import time

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import objectives
from common import atomic
from data import tasks
from data.pipeline import (
    batch_keys,
    make_eval_batches,
    make_train_dataset,
    make_train_iterator,
    tokenizer_from_config,
)
from models import get_model
from models.counting import count_params, flops_per_token
from objectives.transforms import eval_rng
from parallel.mesh import make_mesh
from parallel.pipeline import pipelined_apply
from parallel.rules import get_rules
from parallel.sharding import batch_shardings, check_batch, process_batch_block
from train import preemption
from train.checkpoint import Checkpointer
from train.metrics import MetricWriter
from train.optim import make_optimizer, schedule_args
from train.perf import measure_peak_flops, mfu
from train.progress import Progress
from train.recipe import Recipe
from train.state import abstract_with_shardings, materialize, train_state_shardings
from train.step import make_eval_step, make_train_step
from train.validate import ConfigError, check_config, check_workdir

validate = check_config  # the config checks, under the name studies/sweep.py uses

__all__ = [
    "ConfigError",
    "NonFiniteError",
    "Run",
    "claim_workdir",
    "read_run_config",
    "train_and_evaluate",
]


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient stopped the run (`train.nan_policy`); launch/run.py exits 3."""


def write_json_atomic(path: str, obj) -> None:
    """Writes `obj` as JSON to `path` (local or remote) atomically (common/atomic.py)."""
    atomic.write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def claim_workdir(workdir: str, config, what: str = "run", *, write: bool = True) -> None:
    """Creates `workdir` with config.json, or checks that it already holds this very config.

    Raises:
      ConfigError: `workdir` is not writable or holds a `what` of a different config.
    """
    check_workdir(workdir, config, what)
    atomic.makedirs(workdir)
    if write:
        write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with: its workdir's `config.json` (every field, as written by
    `claim_workdir`); the one way the codebase reads a saved run's config.

    Raises:
      ConfigError: `workdir` holds no config.json (not a run directory).
    """
    path = os.path.join(workdir, "config.json")
    if not atomic.exists(path):
        raise ConfigError(f"{workdir} has no config.json; pass the workdir of a run")
    return ml_collections.ConfigDict(json.loads(atomic.read_text(path)))


class Run:
    """Everything a run builds before its first step (shared by the loop, bench and tests)."""

    def __init__(
        self,
        config,
        *,
        recipe: Recipe | None = None,
        synthetic_data: bool = False,
        devices=None,
        abstract: bool = False,
    ):
        """Builds mesh, model, loss, sharded state and jitted steps for `config`.

        Args:
          config: the run config.
          recipe: what the experiment adds (train/recipe.py: wrappers, a loss, frozen inputs, a
            data source); None trains the objective alone.
          synthetic_data: random-token benchmarks may use a vocabulary smaller than the tokenizer's.
          devices: the devices of the mesh (None: all of this process's backend); compile-only
            TPU or GPU devices for ahead-of-time compilation (aot/compile.py).
          abstract: build `state` and `schedule_args` as ShapeDtypeStructs carrying their
            shardings and allocate nothing (the steps can then only be lowered and compiled).
        """
        check_config(config, None if devices is None else len(devices))
        self.recipe = recipe = recipe or Recipe()
        self.config = config
        self.abstract = abstract
        self.mesh = make_mesh(config.parallel.mesh, devices)
        self.rules = get_rules(config.parallel.rules, pipeline=self.mesh.shape["stage"] > 1)
        self.tokenizer = tokenizer_from_config(config.data)
        if self.tokenizer.vocab_size > config.model.vocab_size and not synthetic_data:
            raise ValueError(
                f"model.vocab_size={config.model.vocab_size} is smaller than the "
                f"tokenizer vocabulary ({self.tokenizer.vocab_size}); raise it"
            )
        self.model = get_model(config.model.family)
        if recipe.model:
            self.model = recipe.model(self, self.model)
        self.pipeline, apply_fn = pipelined_apply(self.model, config, self.mesh, self.rules)
        self.apply_fn = recipe.apply(self, apply_fn) if recipe.apply else apply_fn
        # Host-side batch transform of the objective (masking, span corruption), or None.
        self.transform = objectives.get_batch_transform(config, self.tokenizer)
        target_len = getattr(self.transform, "target_len", None)
        self.batch_keys = (
            self.transform.keys if self.transform else dict.fromkeys(batch_keys(config.data), 2)
        )
        # Labelled fine-tuning data (data.task: classification / seq2seq) replaces packed text.
        self.task = tasks.check(config)
        if self.task:
            self.batch_keys = tasks.batch_keys(config.data.task)
            target_len = config.data.task.target_len if self.task == "naming" else None
        if recipe.batch_keys:
            self.batch_keys = recipe.batch_keys(self)
        self.target_len = target_len
        self.counts = count_params(config.model)
        self.flops = flops_per_token(config.model, config.data.seq_len, target_len=target_len)
        self.optimizer = make_optimizer(config.train, config.model)
        if recipe.optimizer:
            self.optimizer = recipe.optimizer(self, self.optimizer)
        # The objective's loss (the held-out evaluation's) and the one the step trains.
        objective_loss = objectives.get_loss_fn(config.objective)(
            config.model, self.apply_fn, bytes_per_token=self.tokenizer.bytes_per_token
        )
        self.train_loss_fn = recipe.loss(self, self.apply_fn) if recipe.loss else None
        self.loss_fn = self.train_loss_fn if recipe.eval_loss else objective_loss
        check_batch(config.data.batch_size, self.mesh, self.rules, config.train.grad_accum)
        with nn.logical_axis_rules(self.rules):  # outside the mesh: optax runs init eagerly
            abstract_state, self.state_shardings = train_state_shardings(
                self.model, config.model, self.optimizer, self.mesh, self.rules, config.seed
            )
        with self.activate():
            self.state = abstract_state if abstract else self.init_state()
            self.batch_shardings = batch_shardings(self.batch_keys, self.mesh, self.rules)
            replicated = NamedSharding(self.mesh, P())
            # The schedule is a runtime argument of the step, not compiled in (train/step.py).
            args = schedule_args(config.train)
            self.schedule_args = (
                jax.ShapeDtypeStruct(args.shape, args.dtype, sharding=replicated)
                if abstract
                else jax.make_array_from_callback(args.shape, replicated, lambda i: args[i])
            )
            # Inputs of the step that are not trained (a teacher): () or (tree,).
            self.frozen = (recipe.frozen(self),) if recipe.frozen else ()
            frozen_shardings = jax.tree.map(lambda x: x.sharding, self.frozen)
            if self.train_loss_fn is None:
                self.train_loss_fn = objective_loss
                if self.frozen:
                    raise ValueError(f"{recipe.name}: a frozen input needs the recipe's loss")
            self.train_step = jax.jit(
                make_train_step(
                    self.train_loss_fn,
                    self.optimizer,
                    config.train.grad_accum,
                    poison_step=config.train.debug_poison_step,
                    frozen=bool(self.frozen),
                ),
                in_shardings=(
                    self.state_shardings,
                    self.batch_shardings,
                    replicated,
                    *frozen_shardings,
                ),
                out_shardings=(self.state_shardings, replicated),
                donate_argnums=(0,),
            )
            self.eval_step = jax.jit(
                make_eval_step(self.loss_fn, config.train.grad_accum),
                in_shardings=(self.state_shardings.params, self.batch_shardings),
                out_shardings=replicated,
            )
        if not abstract and recipe.init:
            self.state = recipe.init(self, self.state)  # e.g. --config.init_from=DIR

    def init_state(self):
        """A freshly initialised train state, built directly in its shards."""
        c = self.config
        with self.activate():
            return materialize(self.model, c.model, self.optimizer, self.state_shardings, c.seed)

    def abstract_batch(self) -> dict:
        """ShapeDtypeStructs of one global batch, carrying their shardings (for `.lower`)."""
        B, T = self.config.data.batch_size, self.config.data.seq_len
        shapes = {}
        for k, sharding in self.batch_shardings.items():
            rank = self.batch_keys[k]
            length = self.target_len if k.startswith("targets") and self.target_len else T
            shapes[k] = jax.ShapeDtypeStruct((B, length)[:rank], np.int32, sharding=sharding)
        return shapes

    @contextlib.contextmanager
    def activate(self):
        """Context in which logical constraints resolve against this run's mesh and rules."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def global_batch(self, local: dict) -> dict:
        """Builds global arrays from this process's slice of the batch (multi-host safe)."""
        rows = self.config.data.batch_size
        return {
            k: jax.make_array_from_process_local_data(
                self.batch_shardings[k], np.asarray(v), (rows, *np.shape(v)[1:])
            )
            for k, v in local.items()
            if k in self.batch_shardings
        }

    def evaluate(self, params, eval_batches: list) -> dict[str, float]:
        """Loss, bits/byte and every `<name>_sum` of the loss's aux per token (accuracy) over
        `eval_batches` (global arrays from `global_batch`)."""
        with self.activate():
            outs = [self.eval_step(params, b) for b in eval_batches]
        sums: dict[str, float] = {}
        for aux in jax.device_get(outs):
            for k, v in aux.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        return objectives.summarize(sums)


def train_and_evaluate(
    config,
    workdir: str,
    *,
    stop_at: int | None = None,
    init_from: tuple[str, int] | None = None,
    keep_steps: tuple[int, ...] = (),
    desc: str = "train",
    recipe: Recipe | None = None,
) -> dict:
    """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the final summary.

    Args:
      config: the run config.
      workdir: run directory; reused runs resume from their newest checkpoint.
      stop_at: stop after this step with a checkpoint, as a preempted run would (None: run to
        `train.steps`). The schedule still follows `train.steps`, so a later call resumes exactly.
      init_from: `(checkpoint_dir, step)` of another run to continue from when `workdir` has no
        checkpoint yet: its train state (step, parameters, optimizer, RNG) and data position, so
        the new run is that run's continuation under this config's schedule (a WSD cooldown
        branch). Ignored once `workdir` holds checkpoints of its own.
      keep_steps: checkpoints never deleted (a WSD trunk keeps its branch points).
      desc: label of the progress bar and lines (a sweep names its point here).
      recipe: what the experiment adds to the run (train/recipe.py); None: the objective alone.

    Returns:
      The summary (final eval metrics, counts, timings); `preempted=True` if a signal stopped
      the run early with a checkpoint at `step`.

    Raises:
      ConfigError: bad input, found before anything was written.
      NonFiniteError: a non-finite loss or gradient under `train.nan_policy`.
    """
    check_workdir(workdir, config)
    with preemption.active() as guard:
        return _train_and_evaluate(
            config, workdir, stop_at, init_from, keep_steps, desc, guard, recipe
        )


def _warn(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


def _train_and_evaluate(
    config, workdir, stop_at, init_from, keep_steps, desc, guard, recipe
) -> dict:
    t_start = time.perf_counter()
    is_main = jax.process_index() == 0
    try:
        run = Run(config, recipe=recipe)
        # This process reads only the block of batch rows its devices hold.
        any_sharding = next(iter(run.batch_shardings.values()))
        index, count = process_batch_block(any_sharding, config.data.batch_size)
        source = run.recipe.data or _default_data
        train_iter, eval_local = source(run, index, count)
    except ValueError as e:  # every setup check raises ValueError naming the field and the fix
        raise ConfigError(str(e)) from e
    eval_batches = [run.global_batch(b) for b in eval_local]  # on device once, not every eval
    claim_workdir(workdir, config, "run", write=is_main)
    tcfg = config.train
    writer = MetricWriter(workdir, enabled=is_main)
    ckpt = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        keep=tcfg.keep_ckpts,
        every=tcfg.ckpt_every,
        keep_steps=tuple(keep_steps),
    )
    state = run.state
    start, source = 0, ckpt
    if ckpt.manager.all_steps() or ckpt.unfinished():
        abstract = abstract_with_shardings(run.state_shardings, jax.eval_shape(lambda: state))
        del run.state, state  # free the fresh state before restoring into the same shardings
        restored, state = ckpt.restore_newest(abstract, train_iter, warn=_warn)
        start = restored or 0
        if restored is None:  # nothing intact: start over (the bad steps were moved, not deleted)
            state = run.init_state()
        writer.truncate_after(start)
    else:
        del run.state
        writer.truncate_after(-1)  # a run killed before its first checkpoint left rows behind
    own_start = start
    if not start and init_from is not None:
        source = Checkpointer(init_from[0], read_only=True)
        start = init_from[1]
        if start not in source.manager.all_steps():
            raise FileNotFoundError(f"{init_from[0]} holds no checkpoint of step {start}")
        if start >= tcfg.steps:
            raise ValueError(f"init_from step {start} is not before train.steps={tcfg.steps}")
    summary_path = os.path.join(workdir, "summary.json")
    if start >= tcfg.steps and atomic.exists(summary_path):
        print(f"{workdir} already holds a finished run (step {start}); nothing to do")
        return json.loads(atomic.read_text(summary_path))
    if source is not ckpt:
        abstract = abstract_with_shardings(run.state_shardings, jax.eval_shape(lambda: state))
        del state
        state = source.restore(start, abstract, train_iter)
        source.close()
    if not own_start:  # a fresh run or a fresh branch: the counts, once, at step 0
        writer.write(
            0,
            {
                "model/params_total": run.counts["total"],
                "model/params_non_embedding": run.counts["non_embedding"],
                "model/flops_per_token": run.flops["flops_per_token"],
                "model/flops_per_token_6n": run.flops["flops_per_token_6n"],
            },
        )
    peak = tcfg.peak_flops or measure_peak_flops()
    progress = Progress(tcfg.steps, start_step=start, enabled=is_main, desc=desc)
    if run.pipeline is not None:
        progress.write(f"{desc}: {run.pipeline.describe()}")
    if start:
        origin = workdir if source is ckpt else init_from[0]
        progress.write(f"{desc}: continuing from step {start} of {origin}")
    tokens_per_step = config.data.batch_size * config.data.seq_len

    trace_s = compile_s = 0.0
    pending = None  # (step, device metrics): fetched one step late so the device never waits
    clock = {"t": time.perf_counter(), "step": start}  # last point the host saw the device idle
    summary: dict = {}
    faults = _Faults(tcfg, ckpt, jax.device_get(state.nonfinite))
    log = lambda step, m: _log_train(
        step, m, writer, progress, run, peak, tokens_per_step, clock, faults
    )
    last = tcfg.steps if stop_at is None else min(stop_at, tcfg.steps)
    preempted = False
    try:
        with run.activate():
            for step in range(start + 1, last + 1):
                if hasattr(train_iter, "see"):  # an on-policy source (train/recipe.py)
                    train_iter.see(state)
                batch = run.global_batch(next(train_iter))
                if step == start + 1:
                    # Tracing (Python) and XLA compilation apart: only the second is what the
                    # persistent compilation cache saves.
                    t = time.perf_counter()
                    lowered = run.train_step.lower(state, batch, run.schedule_args, *run.frozen)
                    trace_s, t = time.perf_counter() - t, time.perf_counter()
                    compiled = lowered.compile()
                    compile_s = time.perf_counter() - t
                    writer.write(step, {"perf/trace_s": trace_s, "perf/compile_s": compile_s})
                    progress.write(
                        f"{desc}: traced in {trace_s:.2f} s, compiled in {compile_s:.2f} s"
                    )
                    clock = {"t": time.perf_counter(), "step": start}
                state, metrics = compiled(state, batch, run.schedule_args, *run.frozen)
                if pending is not None:
                    log(*pending)
                    pending = None
                if step % tcfg.log_every == 0 or step == tcfg.steps:
                    pending = (step, metrics)
                if step % tcfg.eval_every == 0 or step == tcfg.steps:
                    if pending is not None:
                        log(*pending)
                        pending = None
                    ev = run.evaluate(state.params, eval_batches)
                    if run.recipe.probe:  # held-out figures that are not a loss
                        ev |= run.recipe.probe(run, state.params)
                    writer.write(step, {f"eval/{k}": v for k, v in ev.items()})
                    progress.write(
                        f"step {step}: eval loss {ev['loss']:.4f} nats/token, "
                        f"{ev['bits_per_byte']:.4f} bits/byte"
                        + "".join(
                            f", {k} {v:.4f}"
                            for k, v in ev.items()
                            if k not in ("loss", "bits_per_byte")
                        )
                    )
                    summary.update({f"eval/{k}": v for k, v in ev.items()})
                    clock = {"t": time.perf_counter(), "step": step}
                # Every host asks at every step (multi-host: JAX's preemption sync point).
                preempted = guard.requested(step) and step < last
                if ckpt.should_save(step, tcfg.steps) or step == last or preempted:
                    if pending is not None:  # the save waits for this step anyway
                        log(*pending)
                        pending = None
                    # A remote metrics.jsonl is uploaded now, so a run resumed from this
                    # checkpoint finds every row up to it.
                    writer.flush()
                    # The save copies the state to host anyway; check it is one worth keeping.
                    faults.check(jax.device_get(state.nonfinite))
                    ckpt.save(step, state, train_iter, force=preempted)
                if preempted:
                    last = step
                    progress.write(f"{desc}: preempted; saving a checkpoint at step {step}")
                    break
            if pending is not None:
                log(*pending)
    finally:  # also on errors: finish the async save in flight, flush the metrics
        ckpt.close()
        progress.close()
        writer.close()
    wall = time.perf_counter() - t_start
    summary.update(
        {
            "step": last,
            "wall_s": wall,
            "trace_s": trace_s,
            "compile_s": compile_s,
            "tokens": last * tokens_per_step,
            "params_total": run.counts["total"],
            "params_non_embedding": run.counts["non_embedding"],
            "flops_per_token": run.flops["flops_per_token"],
            "resumed_from": start,
            "skipped_steps": faults.seen,
            "preempted": preempted,
        }
    )
    if is_main and last == tcfg.steps and not preempted:
        write_json_atomic(summary_path, summary)
    return summary


def _default_data(run: Run, index: int, count: int):
    """(checkpointable train iterator, eval batches) of this process's rows: packed text through
    the objective's transform, or a labelled task (`data.task`)."""
    config = run.config
    shard = dict(process_index=index, process_count=count)
    if run.task:
        train_iter = tasks.make_train_iterator(
            config.data, run.tokenizer, seed=config.seed, **shard
        )
    elif run.transform is None:
        train_iter = make_train_iterator(config.data, seed=config.seed, **shard)
    else:  # seeded per batch by grain, so it resumes with the iterator's checkpoint
        train_ds = make_train_dataset(config.data, seed=config.seed, **shard)
        train_iter = iter(train_ds.random_map(run.transform, seed=config.seed + index))
    eval_from = (
        functools.partial(tasks.make_eval_batches, tokenizer=run.tokenizer)
        if run.task
        else make_eval_batches
    )
    eval_local = eval_from(config.data, num_batches=config.train.eval_batches, **shard)
    if run.transform is not None:
        eval_local = [run.transform(b, eval_rng(i)) for i, b in enumerate(eval_local)]
    return train_iter, eval_local


class _Faults:
    """Applies `train.nan_policy` to the device's `nonfinite` counter whenever it is fetched."""

    def __init__(self, train_cfg, ckpt: Checkpointer, nonfinite):
        self.policy = train_cfg.nan_policy
        self.limit = train_cfg.max_nonfinite
        self.ckpt = ckpt
        self.seen = int(nonfinite[0])  # skips before this run (restored with the state)

    def check(self, nonfinite) -> None:
        count, step, cause = (int(x) for x in nonfinite)
        if count <= self.seen:
            return
        metric = "train/loss" if cause == 1 else "train/grad_norm"
        self.seen = count
        if self.policy == "stop" or count > self.limit:
            latest = self.ckpt.latest_step()
            good = f"{self.ckpt.directory}/{latest}" if latest is not None else "none"
            why = (
                "train.nan_policy=stop"
                if self.policy == "stop"
                else f"train.max_nonfinite={self.limit} skipped updates exceeded"
            )
            raise NonFiniteError(
                f"{metric} is not finite at step {step} ({why}); the update was not applied; "
                f"last good checkpoint: {good}; lower train.lr or check the data "
                "(train.nan_policy=skip skips such steps)"
            )
        _warn(
            f"warning: {metric} is not finite at step {step}; update skipped "
            f"({count} skipped so far, train.nan_policy=skip)"
        )


def _log_train(step, metrics, writer, progress, run, peak, tokens_per_step, clock, faults):
    """Writes a finished step's metrics; blocks only on that step, not on the one queued after."""
    m = jax.device_get(metrics)
    faults.check(m["nonfinite"])
    derived = objectives.summarize(m)  # bits/byte and every `<name>_sum` of the loss's aux
    now = time.perf_counter()
    tok_s = tokens_per_step * max(step - clock["step"], 1) / max(now - clock["t"], 1e-9)
    clock.update(t=now, step=step)
    out = {
        **{f"train/{k}": v for k, v in derived.items()},
        "train/loss": float(m["loss"]),  # written as null if it was not finite (and skipped)
        "train/grad_norm": float(m["grad_norm"]),
        "train/lr": float(m["lr"]),
        "train/skipped_steps": float(m["nonfinite"][0]),
        "perf/tokens_per_s": tok_s,
        "perf/mfu": mfu(tok_s, run.flops["flops_per_token"], peak, jax.device_count()),
    }
    writer.write(step, out)
    progress.update(step, out)
