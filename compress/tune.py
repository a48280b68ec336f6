"""Evaluation and short fine-tuning of arbitrary parameter trees (compressed models).

A compressed model's parameters no longer match what `model.init` builds (int8 leaves, low-rank
factors, fewer heads), so these tools take the tree as it is: it is replicated over the run's
mesh, batches are sharded over its batch axes as in training, and the loss is the causal-LM
objective through `compress.quant.wrap_apply` (which dequantizes int8 leaves inside the jitted
step). `finetune` runs the project's own train step (`train.step.make_train_step`) on the
run's training data, optionally keeping pruning masks fixed (compress/masked.py).
"""

import contextlib
import json
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import objectives
from compress.quant import wrap_apply
from data.pipeline import BATCH_KEYS, make_eval_batches, make_train_iterator, tokenizer_from_config
from models import get_model
from parallel.mesh import make_mesh
from parallel.rules import get_rules
from parallel.sharding import batch_shardings
from train.checkpoint import load_state
from train.optim import make_optimizer, schedule_args
from train.state import TrainState
from train.step import make_eval_step, make_train_step


def _merge(base: ml_collections.ConfigDict, saved: dict) -> None:
    with base.unlocked():
        for k, v in saved.items():
            if isinstance(v, dict) and k in base and isinstance(base[k], ml_collections.ConfigDict):
                _merge(base[k], v)
            else:
                base[k] = v


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """A run's resolved config: today's defaults overlaid with its `config.json`.

    Fields added to the config builders after the run was written take their defaults.
    """
    from experiments.common import base_config  # experiments import train, not the reverse

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist; pass the workdir of a finished run")
    with open(path) as f:
        saved = json.load(f)
    config = base_config(saved.get("model", {}).get("size", "small"))
    _merge(config, saved)
    return config


def load_params(workdir: str, step: int | None = None):
    """Host parameters of a run's checkpoint (newest step by default)."""
    state = load_state(os.path.abspath(os.path.join(workdir, "checkpoints")), step)
    return jax.device_get(state["params"] if isinstance(state, dict) else state.params)


class Tools:
    """Mesh, eval batches and steps for one data/parallel config (any model config)."""

    def __init__(self, config, *, eval_batches: int | None = None):
        self.config = config
        self.mesh = make_mesh(config.parallel.mesh)
        self.rules = get_rules(config.parallel.rules)
        self.tokenizer = tokenizer_from_config(config.data)
        self.batch_shardings = batch_shardings(BATCH_KEYS, self.mesh, self.rules)
        self.replicated = NamedSharding(self.mesh, P())
        n = config.train.eval_batches if eval_batches is None else eval_batches
        local = make_eval_batches(config.data, num_batches=n)
        self.eval_batches = [self.global_batch(b) for b in local]

    @contextlib.contextmanager
    def activate(self):
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            yield

    def global_batch(self, local: dict) -> dict:
        return {
            k: jax.device_put(np.asarray(v), self.batch_shardings[k])
            for k, v in local.items()
            if k in self.batch_shardings
        }

    def loss_fn(self, model_cfg):
        model = get_model(model_cfg.family)
        return objectives.get_loss_fn("causal_lm")(
            model_cfg, wrap_apply(model, model_cfg), bytes_per_token=self.tokenizer.bytes_per_token
        )

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def evaluate(self, params, model_cfg) -> dict[str, float]:
        """Held-out loss (nats/token) and bits/byte of `params` on the fixed eval batches."""
        step = jax.jit(make_eval_step(self.loss_fn(model_cfg)))
        params = self.replicate(params)
        sums = {"nll_sum": 0.0, "tokens": 0.0, "bytes": 0.0}
        with self.activate():
            outs = [step(params, b) for b in self.eval_batches]
        for aux in jax.device_get(outs):
            for k in sums:
                sums[k] += float(aux[k])
        return objectives.summarize(sums)

    def grads(self, params, model_cfg, n_batches: int = 4) -> list:
        """Gradients of the training loss on the first `n_batches` training batches (host)."""
        grad_fn = jax.jit(jax.grad(lambda p, b: self.loss_fn(model_cfg)(p, b, None)[0]))
        it = make_train_iterator(self.config.data, seed=self.config.seed)
        params = self.replicate(params)
        with self.activate():
            return [
                jax.device_get(grad_fn(params, self.global_batch(next(it))))
                for _ in range(n_batches)
            ]

    def finetune(self, params, model_cfg, *, steps: int, lr: float, wrap=None, seed_offset=1):
        """`steps` updates of AdamW (warmup 10%, cosine) on the training data from `params`.

        Args:
          params: the tree to tune.
          model_cfg: its model config.
          steps: optimizer updates.
          lr: peak learning rate.
          wrap: optional `optimizer -> optimizer` (e.g. `compress.masked.masked` with fixed masks).
          seed_offset: added to the run seed so tuning does not replay the first training batches.

        Returns:
          (tuned params on host, last train loss).
        """
        tcfg = self.config.train.copy_and_resolve_references()
        with tcfg.unlocked():
            tcfg.steps, tcfg.lr, tcfg.warmup_steps = steps, lr, max(steps // 10, 1)
        optimizer = make_optimizer(tcfg)
        if wrap is not None:
            optimizer = wrap(optimizer)
        schedule = schedule_args(tcfg)  # a runtime argument: every (steps, lr) shares a compile
        step_fn = jax.jit(
            make_train_step(self.loss_fn(model_cfg), optimizer, tcfg.grad_accum),
            donate_argnums=(0,),
        )
        # Fresh buffers (via host): the step donates its state, and `params` stays the caller's.
        params = self.replicate(jax.device_get(params))
        state = TrainState(
            step=jax.numpy.zeros((), jax.numpy.int32),
            params=params,
            opt_state=jax.jit(optimizer.init)(params),
            rng=jax.random.key_data(jax.random.key(self.config.seed)),
        )
        it = make_train_iterator(self.config.data, seed=self.config.seed + seed_offset)
        loss = float("nan")
        with self.activate():
            for _ in range(steps):
                state, metrics = step_fn(state, self.global_batch(next(it)), schedule)
            loss = float(metrics["loss"]) if steps else loss
        return jax.device_get(state.params), loss
